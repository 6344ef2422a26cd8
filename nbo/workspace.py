"""What the notebooks read: a feature snapshot, MLflow runs of every candidate, an Optuna study
and a champion, in a workspace of one dataset under ``NBO_HOME``: ``NBO_HOME/demo`` (the
demo's) or ``NBO_HOME/notebooks/NAME`` for another dataset folder NAME.

After ``make demo`` the snapshot, the comparison and the champion are there; whatever is
missing is made on first use with the same jobs the command line runs (on a generated shop of
``NBO_NOTEBOOK_CUSTOMERS`` customers, 2,000 by default), so a notebook also runs on a fresh
checkout and in CI.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from features.settings import quiet_third_parties

PROJECT = Path(__file__).resolve().parents[1]
TUNED_MODEL = "als"
TOP: dict[str, Path] = {}  # NBO_HOME as the process began: the workspaces live under it


@dataclass
class Workspace:
    home: Path
    snapshot_path: Path
    log: list[str] = field(default_factory=list)  # what opening it had to make

    @cached_property
    def settings(self) -> Any:
        from features.settings import Settings

        return Settings()

    @cached_property
    def snapshot(self) -> Any:
        from features.snapshot import load_snapshot

        return load_snapshot(self.snapshot_path)

    @cached_property
    def experiment(self) -> Any:
        from training.pipeline import prepare

        return prepare(self.snapshot)

    @cached_property
    def client(self) -> Any:
        from training.tracking import use_tracking

        return use_tracking(self.settings.tracking_uri())

    def runs(self, job_filter: str) -> pd.DataFrame:
        """MLflow runs of this workspace's split matching an MLflow filter string."""
        import mlflow

        self.client  # noqa: B018  (points MLflow at the workspace's tracking store)
        return mlflow.search_runs(
            experiment_names=["nbo"], order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`nbo.split` = '{self.experiment.key}' and {job_filter}")

    def study(self) -> Any:
        """The newest Optuna study of this workspace's split, read from its storage."""
        import optuna

        parents = self.runs("tags.`nbo.study` != ''")
        if parents.empty:
            raise LookupError("no tuning study on this split yet")
        return optuna.load_study(study_name=parents["tags.nbo.study"].iloc[0],
                                 storage=self.settings.optuna_url())

    def engine(self) -> Any:
        """The champion with its serving context and the consent store, as the service has
        it, for looking at what a customer is served."""
        import tempfile

        from nbo.jobs.champion import champion_engine

        into = Path(tempfile.mkdtemp(prefix="nbo-champion-"))
        return champion_engine(self.client, self.settings, into, local=True)


def open_workspace(dataset: Path | str | None = None, models: bool = True,
                   tune_trials: int = 8) -> Workspace:
    """The workspace of ``NBO_HOME`` (default the project's ``.nbo``), completed where
    something is missing. ``dataset`` points at another dataset in the data contract (e.g.
    Online Retail after ``nbo import online-retail``); its snapshot is built once. Without
    ``models`` only the snapshot is made sure of."""
    top = TOP.setdefault("home", Path(os.environ.get("NBO_HOME", PROJECT / ".nbo")).resolve())
    # a workspace per dataset: the demo's (which 'nbo demo' makes) or one per other dataset,
    # so a notebook never pairs one dataset's snapshot with a model of another
    source = None if dataset is None else Path(dataset).resolve()
    home = top / "demo" if source is None else top / "notebooks" / source.name
    os.environ["NBO_HOME"] = str(home)
    os.environ.setdefault("BENTOML_HOME", str(home / "bentoml"))
    quiet_third_parties()
    # a notebook shows results: MLflow's progress notes and Jupyter's widget hint are noise
    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")
    import mlflow  # noqa: F401  (configures its loggers on import; quieted after)

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    space = Workspace(home, home / "snapshot")
    if source is None:
        _generated_snapshot(space)
    else:
        _snapshot_of(space, source)
    if models:
        _comparison(space)
        _study(space, tune_trials)
        _champion(space)
    return space


def _generated_snapshot(space: Workspace) -> None:
    if (space.snapshot_path / "manifest.json").exists():
        return
    from features.generate import ShopSpec, generate_shop

    customers = int(os.environ.get("NBO_NOTEBOOK_CUSTOMERS", "2000"))
    shop = space.snapshot_path.parent / "shop"
    generate_shop(ShopSpec(customers=customers, seed=42, end=datetime(2026, 6, 30)), shop)
    space.log.append(f"generated a shop of {customers:,} customers in {shop}")
    _snapshot_of(space, shop)


def _snapshot_of(space: Workspace, dataset: Path) -> None:
    if (space.snapshot_path / "manifest.json").exists():
        return
    from features.snapshot import build_snapshot

    build_snapshot(dataset, space.snapshot_path, now=space.settings.now,
                   max_bad_share=space.settings.max_bad_share)
    space.log.append(f"built the feature snapshot {space.snapshot_path}")


def _comparison(space: Workspace) -> None:
    if not space.runs("tags.`nbo.job` = 'compare'").empty:
        return
    from training.pipeline import compare_candidates

    compare_candidates(space.experiment, log=True)
    space.log.append("compared every candidate on the split (logged to MLflow)")


def _study(space: Workspace, trials: int) -> None:
    if not space.runs("tags.`nbo.study` != ''").empty:
        return
    from training.pipeline import validation_folds
    from training.tune import tune

    tune(space.experiment, TUNED_MODEL, trials, space.settings.optuna_url(), seed=42,
         validation=validation_folds(space.experiment, 1))
    space.log.append(f"tuned {TUNED_MODEL} with {trials} Optuna trials (logged to MLflow; the "
                     "best is registered as challenger, as nbo tune does)")


def _champion(space: Workspace) -> None:
    from training.tracking import CHAMPION, promote, version_by_alias

    if version_by_alias(space.client, CHAMPION) is not None:
        return
    from nbo.jobs.champion import publish_champion

    decision = promote(space.client)  # the study registered its best trial as challenger
    space.log.append(decision.message)
    if decision.promoted:  # as 'nbo promote' does: the service would serve it
        space.log.append(f"published the champion to BentoML's model store as "
                         f"{publish_champion(space.client)}")
