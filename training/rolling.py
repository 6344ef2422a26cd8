"""Rolling-origin evaluation: consecutive test windows, each model judged in every one against
the best plain baseline of that window, with paired bootstrap intervals.

One test month is thin evidence: a lead can hold in one month and vanish in the next. Each
window here trains on what came before its cut-off and tests on the window after it, and a
model's lift over a baseline is measured on the same customers (a paired comparison), with a
95% interval from resampling those customers. Customers with training history and cold-start
customers (none before the cut-off) are reported apart: every model serves the cold ones the
same fallback, and averaging them in hides how the models differ on the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from training.evaluate import TASKS, customer_metrics
from training.models.base import Recommender
from training.pipeline import Experiment

BASELINES = ("ease", "als", "itemknn")  # plain models, judged at their library defaults
METRICS = ("ndcg", "recall")
GROUPS = ("history", "cold-start")
ROUNDS = 2000  # bootstrap resamples per window
LEVEL = 0.95


def cutoffs(end: pd.Timestamp, windows: int, days: float = 30.0) -> list[pd.Timestamp]:
    """The cut-offs of ``windows`` consecutive test windows of ``days`` that end at ``end``,
    oldest first."""
    if windows < 1:
        raise ValueError(f"at least one window is needed, not {windows}")
    return [end - pd.Timedelta(days=days * i) for i in range(windows, 0, -1)]


@dataclass
class Window:
    """The customers' metrics of every model on one test window."""

    cutoff: pd.Timestamp
    customers: dict[str, pd.DataFrame] = field(default_factory=dict)  # label: customer_metrics

    def add(self, label: str, model: Recommender, experiment: Experiment) -> None:
        """Score a model fitted on the window's training data under ``label``."""
        self.customers[label] = customer_metrics(model, experiment.split, experiment.k)


def _group(table: pd.DataFrame, task: str, group: str) -> pd.DataFrame:
    part = table[table["task"] == task]
    return part[part["cold"] == (group == "cold-start")]


def _interval(draws: np.ndarray) -> tuple[float, float]:
    tail = (1.0 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def compare(windows: list[Window], baselines: tuple[str, ...], rounds: int = ROUNDS,
            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model of every window against the window's best baseline (of ``baselines``, the
    labels of the plain models; the best by the metric and task in that window), per task,
    metric and group.

    Returns the per-window table (one row per window, label, task, group, metric: the mean,
    the best baseline, the lift over it and its interval, intervals only for customers with
    history) and the summary (per label, task and metric over the windows: the mean, the mean
    lift with an interval from the same resamples, the worst window's lift and how many
    windows' intervals lie above zero).
    """
    rng = np.random.default_rng(seed)
    rows = []
    draws: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for window in windows:
        missing = set(baselines) - set(window.customers)
        if missing:
            raise ValueError(f"window {window.cutoff.date()} lacks the baselines {sorted(missing)}")
        for task in TASKS:
            for group in GROUPS:
                parts = {label: _group(table, task, group)
                         for label, table in window.customers.items()}
                customers = len(parts[baselines[0]])
                for label, part in parts.items():
                    if len(part) != customers:
                        raise ValueError(f"{label} was scored on other customers than "
                                         f"{baselines[0]} in window {window.cutoff.date()}")
                if not customers:
                    continue
                picks = (rng.integers(0, customers, size=(rounds, customers))
                         if group == "history" else None)
                for metric in METRICS:
                    values = {label: part[metric].to_numpy() for label, part in parts.items()}
                    best = max(baselines, key=lambda b: values[b].mean())
                    # each model's mean in each resample, the best baseline's among them
                    resampled = ({label: value[picks].mean(axis=1)
                                  for label, value in values.items()}
                                 if picks is not None else {})
                    for label, value in values.items():
                        row = {"cutoff": window.cutoff, "model": label, "task": task,
                               "group": group, "metric": metric, "customers": customers,
                               "mean": float(value.mean()), "baseline": best,
                               "lift": float(value.mean() / values[best].mean() - 1.0)}
                        if picks is not None:
                            with np.errstate(divide="ignore", invalid="ignore"):
                                sample = resampled[label] / resampled[best] - 1.0
                            row["low"], row["high"] = _interval(sample)
                            draws.setdefault((label, task, metric), []).append(sample)
                        rows.append(row)
    table = pd.DataFrame(rows)
    summary = []
    history = table[table["group"] == "history"]
    for key, part in history.groupby(["model", "task", "metric"], sort=False):
        label, task, metric = (str(name) for name in key)
        mean_draws = np.mean(draws[(label, task, metric)], axis=0)
        low, high = _interval(mean_draws)
        summary.append({"model": label, "task": task, "metric": metric,
                        "windows": len(part), "mean": float(part["mean"].mean()),
                        "lift": float(part["lift"].mean()), "low": low, "high": high,
                        "worst_lift": float(part["lift"].min()),
                        "windows_above_zero": int((part["low"] > 0).sum())})
    return table, pd.DataFrame(summary)
