"""The loop back into training, as one job for a scheduler: export the store's events and
feedback into the dataset, build features, train the champion's model again (its kind and
settings, the champion's feature settings), gate it against the champion and publish it.

The gate scores the champion as it is served on the new split's test window, so a retrain is
promoted only when learning from the new data is at least as good as keeping the model that
serves. A champion trained on part of that window is favoured by it: retrain when at least
``test_days`` of new data have come in (or pass a shorter test window).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from features.settings import Settings
    from nbo.jobs.export import Exported

PROMOTED, KEPT = "promoted", "kept"


@dataclass(frozen=True)
class Retrained:
    outcome: str  # PROMOTED or KEPT
    exported: Exported
    message: str
    challenger: str | None  # its registered version
    published: str | None  # the BentoML tag a running service switches to


def retrain(dataset: Path, snapshot: Path, settings: Settings, client: Any,
            test_days: float = 30.0, k: int = 10,
            report: Callable[[str], None] = lambda _: None) -> Retrained:
    """Run the loop once; raises on any failure (nothing is promoted then)."""
    from features.context import read_context
    from features.snapshot import build_snapshot
    from nbo.jobs.champion import publish_champion
    from nbo.jobs.export import export_store
    from serving.store import open_store
    from training.evaluate import evaluate
    from training.models.base import Recommender
    from training.pipeline import prepare, train
    from training.tracking import CHAMPION, flat_metrics, promote, registered_folder

    store = open_store(settings)
    try:
        report("exporting the store's events and feedback")
        exported = export_store(store, dataset)
    finally:
        store.close()
    with tempfile.TemporaryDirectory() as tmp:
        folder, version = registered_folder(client, CHAMPION, Path(tmp))
        champion = Recommender.load(folder)
        _, config, _ = read_context(folder / "context")
        kind, params = champion_settings(client, version)
        report("building features")
        build_snapshot(dataset, snapshot, config, now=settings.now,
                       max_bad_share=settings.max_bad_share)
        experiment = prepare(snapshot, None, test_days, k)
        report(f"scoring champion version {version} on the new split")
        baseline = flat_metrics(evaluate(champion, experiment.split, k))
    trained = train(experiment, kind, params, report=report)
    decision = promote(client, baseline=baseline)
    if not decision.promoted:
        return Retrained(KEPT, exported, decision.message, decision.challenger, None)
    return Retrained(PROMOTED, exported, decision.message,
                     trained.logged.version if trained.logged else None,
                     publish_champion(client))


def champion_settings(client: Any, version: str) -> tuple[str, dict[str, str]]:
    """The kind and settings the champion was trained with (from its MLflow run)."""
    from training.tracking import MODEL_NAME

    run = client.get_run(client.get_model_version(MODEL_NAME, version).run_id)
    params = dict(run.data.params)
    kind = params.pop("model")
    return kind, {name.removeprefix("model."): value for name, value in params.items()
                  if name.startswith("model.")}
