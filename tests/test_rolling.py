"""Rolling-origin evaluation: windows, paired lifts over the best baseline with intervals, the
two customer groups apart; the reduced benchmark on the real file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.snapshot import build_snapshot
from training.evaluate import customer_metrics, evaluate
from training.models import create
from training.pipeline import prepare
from training.rolling import Window, compare, cutoffs

BASES = ("ease default", "als default")


def test_windows_run_back_from_the_end_oldest_first() -> None:
    end = pd.Timestamp("2011-12-09 12:50")
    assert cutoffs(end, 3, days=30) == [end - pd.Timedelta(days=90),
                                         end - pd.Timedelta(days=60),
                                         end - pd.Timedelta(days=30)]
    with pytest.raises(ValueError, match="at least one window"):
        cutoffs(end, 0)


def customers(ndcg: dict[str, np.ndarray], cold: int = 0, recall: float = 0.5) -> pd.DataFrame:
    """A model's customer metrics: ``ndcg`` per task for customers with history, then
    ``cold`` cold-start customers at 0.1."""
    parts = []
    for task, values in ndcg.items():
        n = len(values)
        parts.append(pd.DataFrame({
            "task": task, "row": np.arange(n + cold), "cold": [False] * n + [True] * cold,
            "ndcg": np.concatenate([values, np.full(cold, 0.1)]),
            "recall": np.full(n + cold, recall)}))
    return pd.concat(parts, ignore_index=True)


def window(tables: dict[str, pd.DataFrame], day: str = "2011-11-09") -> Window:
    return Window(pd.Timestamp(day), dict(tables))


def row_of(table: pd.DataFrame, model: str, task: str, metric: str = "ndcg",
           group: str = "history") -> pd.Series:
    part = table[(table["model"] == model) & (table["task"] == task)
                 & (table["metric"] == metric) & (table["group"] == group)]
    assert len(part) == 1, part
    return part.iloc[0]


def test_a_lift_is_measured_against_the_best_baseline_per_task_with_a_paired_interval() -> None:
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.0, 1.0, 400)  # customers differ far more than the models do
    ease = {"all": spread, "novel": spread * 0.5}
    als = {"all": spread * 0.9, "novel": spread * 0.6}
    better = {"all": spread * 1.05, "novel": spread * 0.6}  # +5% over EASE; equal to ALS
    table, summary = compare([window({"ease default": customers(ease),
                                      "als default": customers(als),
                                      "blend": customers(better)})], BASES)
    on_all, on_novel = row_of(table, "blend", "all"), row_of(table, "blend", "novel")
    assert on_all["baseline"] == "ease default" and on_novel["baseline"] == "als default"
    assert on_all["lift"] == pytest.approx(0.05)
    # paired: every customer gains 5%, so the interval is tight around it although the
    # customers' own values spread from 0 to 1 (resampling the models apart straddles 0)
    assert 0.049 < on_all["low"] <= on_all["high"] < 0.051
    assert on_novel["lift"] == pytest.approx(0.0) and on_novel["low"] == pytest.approx(0.0)
    best = row_of(table, "ease default", "all")
    assert best["lift"] == 0.0 and best["low"] == best["high"] == pytest.approx(0.0)
    row = summary[(summary["model"] == "blend") & (summary["task"] == "all")
                  & (summary["metric"] == "ndcg")].iloc[0]
    assert row["windows"] == 1 and row["windows_above_zero"] == 1
    assert row["lift"] == pytest.approx(0.05) and row["worst_lift"] == pytest.approx(0.05)


def test_the_summary_gives_the_mean_lift_and_the_worst_window() -> None:
    rng = np.random.default_rng(1)
    windows = []
    for day, gain in (("2011-10-10", 1.20), ("2011-11-09", 0.98)):
        base = rng.uniform(0.1, 1.0, 300)
        windows.append(window({"ease default": customers({"all": base}),
                               "als default": customers({"all": base * 0.5}),
                               "blend": customers({"all": base * gain})}, day))
    table, summary = compare(windows, BASES, rounds=500)
    lifts = table[(table["model"] == "blend") & (table["metric"] == "ndcg")]["lift"]
    assert lifts.tolist() == pytest.approx([0.20, -0.02])
    row = summary[(summary["model"] == "blend") & (summary["metric"] == "ndcg")].iloc[0]
    assert row["lift"] == pytest.approx(0.09) and row["worst_lift"] == pytest.approx(-0.02)
    assert row["windows"] == 2 and row["windows_above_zero"] == 1
    assert row["low"] < 0.09 < row["high"]


def test_cold_start_customers_are_reported_apart_and_without_an_interval() -> None:
    base = np.linspace(0.2, 0.8, 50)
    table, _ = compare([window({"ease default": customers({"all": base}, cold=20),
                                "als default": customers({"all": base * 0.5}, cold=20),
                                "blend": customers({"all": base * 2}, cold=20)})], BASES)
    history, cold = row_of(table, "blend", "all"), row_of(table, "blend", "all", group="cold-start")
    assert history["customers"] == 50 and cold["customers"] == 20
    assert history["mean"] == pytest.approx(base.mean() * 2) and history["lift"] == pytest.approx(1)
    assert cold["mean"] == pytest.approx(0.1) and cold["lift"] == pytest.approx(0.0)
    assert pd.isna(cold["low"]) and pd.isna(cold["high"])


def test_models_scored_on_other_customers_or_without_the_baselines_are_refused() -> None:
    base = np.linspace(0.2, 0.8, 50)
    tables = {"ease default": customers({"all": base}), "als default": customers({"all": base})}
    with pytest.raises(ValueError, match="other customers"):
        compare([window({**tables, "blend": customers({"all": base[:40]})})], BASES)
    with pytest.raises(ValueError, match="lacks the baselines"):
        compare([window({"ease default": tables["ease default"]})], BASES)


def test_the_customers_metrics_average_to_the_evaluation(
        shop: Path, tmp_path: Path) -> None:
    build_snapshot(shop, tmp_path / "snap")
    experiment = prepare(tmp_path / "snap", test_days=60)
    model = create("itemknn").fit(experiment.split.data)
    table = customer_metrics(model, experiment.split)
    evaluation = evaluate(model, experiment.split)
    for task in ("all", "novel"):
        part = table[table["task"] == task]
        judged = evaluation[evaluation["task"] == task].set_index("group")
        assert len(part) == judged.loc["overall", "customers"]
        assert part["ndcg"].mean() == pytest.approx(judged.loc["overall", "ndcg"])
        assert part["recall"].mean() == pytest.approx(judged.loc["overall", "recall"])
        cold = part[part["cold"]]
        assert len(cold) == judged.loc["cold-start", "customers"]
        assert cold["ndcg"].mean() == pytest.approx(judged.loc["cold-start", "ndcg"])
    # the truth of "novel" leaves out what the customer bought before the cut-off
    novel = table[table["task"] == "novel"]
    bought = experiment.split.bought_before[novel["row"].to_numpy()]
    truth = experiment.split.truth[novel["row"].to_numpy()]
    assert (truth.multiply(bought).sum(axis=1) > 0).any()  # some bought again: "all" only
    assert len(novel) < len(table[table["task"] == "all"])


@pytest.mark.realdata
@pytest.mark.slow
def test_the_reduced_rolling_benchmark_keeps_the_blend_ahead_of_ease_on_discovery(
        online_retail_csv: Path, tmp_path: Path) -> None:
    """The benchmark's reduced form (two windows, two trials, one validation window) writes
    its report, and in both windows the default blend finds more of what customers bought for
    the first time than plain EASE (bench/results/quality.md measured it ahead in all six)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import quality
    finally:
        sys.path.pop(0)
    quality.main(["--windows", "2", "--trials", "2", "--folds", "1", "--work",
                  str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                  "--models", "popularity", "ease", "als", "itemknn", "blend"])
    table = pd.read_csv(tmp_path / "out" / "quality.csv")
    report = (tmp_path / "out" / "quality.md").read_text()
    assert "## Summary over the windows" in report and report.count("## Window from") == 2
    assert "by `bench/quality.py --windows 2 --trials 2 --folds 1 --work" in report
    history = table[(table["group"] == "history") & (table["metric"] == "ndcg")
                    & (table["task"] == "novel")]
    assert history["cutoff"].nunique() == 2
    for cutoff, part in history.groupby("cutoff"):
        means = part.set_index("model")["mean"]
        assert means["blend default"] > means["ease default"], cutoff
        assert {"blend tuned", "als tuned", "popularity tuned"} <= set(means.index)
