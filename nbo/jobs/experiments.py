"""Experiments' jobs: the arms' models put where the service finds them, and what a report
needs of the served catalogue (prices, margins, segments)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from features.settings import Settings
    from serving.attribution import Prices
    from serving.experiments import Arm
    from serving.store import Store


def arms_of(client: Any, pairs: list[tuple[str, float]]) -> list[Arm]:
    """Each (registered model alias or version, share) as an arm serving that version: its
    model is copied into BentoML's store under the arms' name, once per version."""
    from serving.experiments import Arm
    from training.tracking import registered_folder

    tags: dict[str, str] = {}
    arms = []
    with tempfile.TemporaryDirectory() as tmp:
        for at, (ref, share) in enumerate(pairs):
            folder, version = registered_folder(client, ref, Path(tmp) / str(at))
            if version not in tags:
                tags[version] = arm_model(folder, version)
            arms.append(Arm(ref, share, tags[version], version))
    return arms


def arm_model(folder: Path, version: str) -> str:
    """The BentoML store's entry of an arm's model version: the one there, else a copy."""
    import bentoml

    from serving.experiments import ARM_MODEL_NAME
    from serving.models import import_model

    try:
        held = bentoml.models.list(ARM_MODEL_NAME)
    except bentoml.exceptions.NotFound:  # no arm's model yet
        held = []
    for entry in held:
        if entry.info.labels.get("mlflow_version") == version:
            return str(entry.tag)
    return import_model(folder, version, ARM_MODEL_NAME)


def served_catalogue(settings: Settings, store: Store) -> tuple[Prices, pd.Series]:
    """The served model's prices and margins, and each customer's segment by their token."""
    import bentoml
    import pandas as pd

    from features.context import read_context
    from nbo.jobs.newsletter import NoServedModel
    from serving.attribution import Prices
    from serving.engine import CONTEXT_DIR
    from serving.models import newest

    try:
        entry = newest(settings.model_tag)
    except bentoml.exceptions.NotFound:
        raise NoServedModel(f"no model {settings.model_tag} in the BentoML store; run "
                            "'nbo promote' first") from None
    tables, _, _ = read_context(Path(entry.path) / CONTEXT_DIR)
    customers = tables["customers"]
    ids = customers["customer_id"].astype(str).to_numpy()
    segments = pd.Series(customers["segment"].to_numpy(), index=store.tokens(ids))
    return Prices.from_offers(tables["offers"]), segments


def log_report(report: dict[str, Any]) -> str:
    """The report as an MLflow run of the experiment ``nbo-experiments``: each arm's rates
    and each lift as metrics, the whole report as JSON; the run's id."""
    import mlflow

    mlflow.set_experiment("nbo-experiments")
    with mlflow.start_run(run_name=f"report {report['experiment']}") as run:
        mlflow.set_tags({"nbo.experiment": report["experiment"],
                         "nbo.control": report["control"]})
        metrics = {f"{arm['arm']}.{key}": value for arm in report["arms"]
                   for key, value in arm.items()
                   if key != "arm" and isinstance(value, int | float) and value is not None}
        metrics |= {f"lift.{row['arm']}.{row['metric']}": row["difference"]
                    for row in report["lift"] if row.get("difference") is not None}
        mlflow.log_metrics({_metric_name(k): float(v) for k, v in metrics.items()})
        mlflow.log_dict(report, "report.json")
        return str(run.info.run_id)


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-/ " else "_" for c in key)
