"""Training jobs: evaluate candidates on a time split, log and register, compare side by side."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from features.context import serving_context, write_context
from features.feedback import response_rates
from features.snapshot import Snapshot, load_snapshot
from training.calibration import Calibration, calibrate
from training.data import TrainData
from training.evaluate import Split, fit_and_evaluate, time_split
from training.models import MODELS, create
from training.models.base import Recommender
from training.tracking import Logged, log_evaluation, log_model_run

DEFAULT_TEST_DAYS = 30.0


@dataclass
class Experiment:
    """A snapshot and its evaluation split, shared by every candidate of one job."""

    snapshot: Snapshot
    split: Split
    k: int

    @property
    def key(self) -> str:
        """Identifies the split: candidates are comparable only when their keys match."""
        return (f"{self.snapshot.manifest['fingerprint'][:12]}@"
                f"{self.split.cutoff.isoformat()}/k={self.k}")

    def params(self) -> dict[str, Any]:
        return {"snapshot": str(self.snapshot.path), "cutoff": self.split.cutoff.isoformat(),
                "k": self.k, "split": self.key}


def prepare(snapshot_path: Path | Snapshot, cutoff: pd.Timestamp | None = None,
            test_days: float = DEFAULT_TEST_DAYS, k: int = 10,
            window_days: float | None = None) -> Experiment:
    """Load a snapshot and split it: by default the last ``test_days`` are the test.

    ``window_days`` ends the test window early (a validation split that must not see a
    later test period); by default it runs to the end of the snapshot.
    """
    snapshot = snapshot_path if isinstance(snapshot_path, Snapshot) else load_snapshot(
        snapshot_path)
    moment = cutoff if cutoff is not None else snapshot.now - pd.Timedelta(days=test_days)
    split = time_split(snapshot.events, snapshot.products, snapshot.customers, moment,
                       snapshot.config, test_days=window_days, feedback=snapshot.feedback)
    return Experiment(snapshot, split, k)


def write_serving_context(snapshot: Snapshot, folder: Path,
                          calibration: Calibration | None = None) -> Path:
    """The offer table, customer state and consents serving reads, as of the snapshot, and
    the model's propensity calibration where there is one."""
    features = snapshot.features
    tables = serving_context(snapshot.events, snapshot.products, snapshot.customers,
                             snapshot.consents, features.customer_state,
                             features.customer_features, snapshot.now)
    written = write_context(tables, snapshot.config, snapshot.now, folder)
    if calibration is not None:
        calibration.write(written)
    return written


def feedback_reports(snapshot: Snapshot) -> dict[str, pd.DataFrame]:
    """Response rates of served offers per offer, channel and segment (when there is
    feedback), logged with the model so the next training shows how offers fared."""
    if snapshot.feedback.empty:
        return {}
    rates = response_rates(snapshot.feedback, snapshot.features.customer_features)
    return {f"responses/by_{key.removesuffix('_id')}": table for key, table in rates.items()}


def validation_folds(experiment: Experiment, folds: int, days: float = DEFAULT_TEST_DAYS
                     ) -> list[Experiment]:
    """Consecutive windows of ``days`` just before the experiment's cut-off, newest first.

    Tuning on these leaves the experiment's own test window unseen, so the champion gate,
    which compares on that window, is not judging configs chosen on it.
    """
    cutoff = experiment.split.cutoff
    return [prepare(experiment.snapshot, cutoff - pd.Timedelta(days=days * (i + 1)),
                    k=experiment.k, window_days=days) for i in range(folds)]


@dataclass
class Trained:
    model: Recommender
    evaluation: pd.DataFrame
    fit_seconds: float
    logged: Logged | None


def train(experiment: Experiment, kind: str, params: dict[str, Any] | None = None,
          log: bool = True, nested: bool = False,
          report: Callable[[str], None] | None = None) -> Trained:
    """Evaluate a candidate on the split, then refit it on the whole snapshot, which is the
    model that is logged and registered (as ``challenger``)."""
    candidate = create(kind, params)
    evaluation, seconds = fit_and_evaluate(candidate, experiment.split, experiment.k, report)
    if report:
        report(f"calibrating {kind}'s propensity")
    calibration = calibrate(candidate, experiment.split, experiment.snapshot.feedback)
    if report:
        report(f"refitting {kind} on all data")
    final = create(kind, params).fit(TrainData.from_features(experiment.snapshot.features))
    logged = None
    if log:
        if report:
            report(f"logging {kind} to MLflow")
        logged = log_model_run(final, evaluation, experiment.snapshot.manifest, experiment.key,
                               experiment.params(), {"fit_seconds": seconds}, nested=nested,
                               tables=feedback_reports(experiment.snapshot),
                               context=partial(write_serving_context, experiment.snapshot,
                                               calibration=calibration))
    return Trained(final, evaluation, seconds, logged)


def compare_candidates(experiment: Experiment, kinds: list[str] | None = None,
                       params: dict[str, dict[str, Any]] | None = None,
                       report: Callable[[str], None] | None = None,
                       log: bool = False) -> pd.DataFrame:
    """Every candidate side by side on the same split: one row per model and task.

    With ``log`` each candidate is an MLflow run (params, every metric, fit time and the
    evaluation table; no model) under one parent run tagged ``nbo.job=compare``."""
    rows = []
    parent = mlflow.start_run(run_name="compare") if log else nullcontext()
    with parent:
        if log:
            mlflow.set_tags({"nbo.job": "compare", "nbo.split": experiment.key})
            mlflow.log_params(experiment.params())
        for kind in kinds or list(MODELS):
            started = time.perf_counter()
            model = create(kind, (params or {}).get(kind))
            evaluation, seconds = fit_and_evaluate(model, experiment.split, experiment.k,
                                                   report)
            if log:
                with mlflow.start_run(run_name=kind, nested=True):
                    mlflow.set_tag("nbo.job", "compare")
                    log_evaluation(model, evaluation, experiment.key,
                                   extra_metrics={"fit_seconds": seconds})
            overall = evaluation[evaluation["group"] == "overall"]
            cold = evaluation[evaluation["group"] == "cold-start"].set_index("task")
            for row in overall.itertuples(index=False):
                rows.append({
                    "model": kind, "task": row.task, "ndcg": row.ndcg, "recall": row.recall,
                    "precision": row.precision, "map": row.map, "hit_rate": row.hit_rate,
                    "value": row.value, "coverage": row.coverage,
                    "cold_ndcg": cold["ndcg"].get(row.task, float("nan")),
                    "fit_s": seconds, "total_s": time.perf_counter() - started,
                })
    return pd.DataFrame(rows)

