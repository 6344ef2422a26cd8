"""Quality benchmark on the UCI Online Retail data: every model in consecutive monthly windows.

    uv run python bench/quality.py [--windows 6] [--trials-scale 1.0] [--folds 3]

Each window's cut-off trains on everything before it and tests on the 30 days after it; the
last window ends with the data (2011-12-09). In every window each model is scored at its
default config and tuned on the ``--folds`` 30-day validation windows just before that
window's cut-off, so no tuning sees its own test window or a later one. Every model is set
against the window's best plain baseline (EASE, ALS and item neighbours at their defaults),
customer by customer, with 95% bootstrap intervals; customers with history and cold-start
customers are reported apart. Results go to bench/results/quality.md and quality.csv (or
``--out``). ``--windows 2 --trials 2 --folds 1`` is the reduced form the tests run.

``--skip N`` leaves out the last N windows: ``--skip 6`` gives windows before the benchmark's,
to choose a model's defaults on without looking at the benchmark's windows, e.g.
``--windows 3 --skip 6 --models blend --trials 1 --folds 1 --out /tmp/dev``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ONLINE_RETAIL, RESULTS, ROOT, machine

WINDOW_DAYS = 30
TRIALS = {"popularity": 6, "als": 30, "bpr": 12, "itemknn": 15, "follows": 15, "ease": 15,
          "lightfm": 4, "blend": 30}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "quality")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder of quality.md and quality.csv")
    parser.add_argument("--windows", type=int, default=6, help="monthly test windows")
    parser.add_argument("--folds", type=int, default=3,
                        help="validation windows before each cut-off that tuning judges on")
    parser.add_argument("--trials-scale", type=float, default=1.0,
                        help="times each model's trials: " + ", ".join(
                            f"{kind} {n}" for kind, n in TRIALS.items()))
    parser.add_argument("--trials", type=int, help="trials per model, in place of the scale")
    parser.add_argument("--models", nargs="*", default=list(TRIALS), choices=list(TRIALS))
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the last SKIP monthly windows (windows to develop on)")
    args = parser.parse_args(argv)
    args.command = " ".join(["bench/quality.py", *(sys.argv[1:] if argv is None else argv)])
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"skipped: {ONLINE_RETAIL} is absent")
    if args.folds < 1:
        parser.error("--folds must be at least 1: a window's tuning never judges on the window")
    if args.skip < 0:
        parser.error("--skip must be at least 0")

    from features.importers import import_online_retail
    from features.snapshot import build_snapshot, load_snapshot
    from training.models import create
    from training.pipeline import prepare, validation_folds
    from training.rolling import BASELINES, Window, compare, cutoffs
    from training.tracking import use_tracking
    from training.tune import tune

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    import_online_retail(ONLINE_RETAIL, work / "dataset")
    build_snapshot(work / "dataset", work / "snapshot")
    snapshot = load_snapshot(work / "snapshot")
    use_tracking(f"sqlite:///{work / 'mlflow.db'}")
    storage = f"sqlite:///{work / 'optuna.db'}"
    kinds = list(dict.fromkeys([*args.models, *BASELINES]))  # the baselines are always scored
    started_run = datetime.now(UTC)

    windows, tuned, fits = [], [], []
    for cutoff in cutoffs(snapshot.now, args.windows + args.skip, WINDOW_DAYS)[:args.windows]:
        experiment = prepare(snapshot, cutoff=cutoff, window_days=WINDOW_DAYS)
        window = Window(cutoff)
        for kind in kinds:
            started = time.perf_counter()
            model = create(kind).fit(experiment.split.data)
            fits.append({"cutoff": cutoff, "model": kind, "fit_s": time.perf_counter() - started})
            window.add(f"{kind} default", model, experiment)
        validation = validation_folds(experiment, args.folds, WINDOW_DAYS)
        for kind in args.models:
            trials = args.trials or max(1, round(TRIALS[kind] * args.trials_scale))
            started = time.perf_counter()
            study = f"bench-{kind}-{cutoff:%Y%m%d}-{started_run:%Y%m%d%H%M%S}"
            result = tune(experiment, kind, trials, storage, study_name=study, seed=42,
                          validation=validation, register=False)
            seconds = time.perf_counter() - started
            window.add(f"{kind} tuned", create(kind, result.best_params).fit(
                experiment.split.data), experiment)
            tuned.append({"cutoff": cutoff, "model": kind, "trials": trials,
                          "tuning_s": seconds, "params": result.best_params})
            print(f"{cutoff.date()} tuned {kind} in {seconds:.0f} s: {result.best_params}",
                  flush=True)
        windows.append(window)
        print(f"window {cutoff.date()} done", flush=True)

    table, summary = compare(windows, tuple(f"{kind} default" for kind in BASELINES))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "quality.csv", index=False)
    overhead = pipeline_overhead(experiment)
    write(args, table, summary, pd.DataFrame(tuned), pd.DataFrame(fits), overhead, windows)


def pipeline_overhead(test) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """ALS on the full data: the library fit against the work around it."""
    import tempfile

    from training.data import TrainData
    from training.models import create
    from training.tracking import log_model_run

    features = test.snapshot.features
    started = time.perf_counter()
    data = TrainData.from_features(features)
    matrix_s = time.perf_counter() - started
    model = create("als")
    started = time.perf_counter()
    model.fit(data)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "m")
    save_s = time.perf_counter() - started
    started = time.perf_counter()
    log_model_run(model, pd.DataFrame(columns=["task", "group", "ndcg", "recall", "precision",
                                               "map", "hit_rate", "coverage"]),
                  test.snapshot.manifest, test.key, test.params(), {}, register=False)
    log_s = time.perf_counter() - started
    return {"matrix and id maps": matrix_s, "ALS fit (implicit)": fit_s, "save": save_s,
            "MLflow logging": log_s}


def _lift(row) -> str:  # type: ignore[no-untyped-def]
    interval = ("" if pd.isna(row.get("low")) else
                f" [{row['low'] * 100:+.1f}, {row['high'] * 100:+.1f}]")
    return f"{row['lift'] * 100:+.1f}%{interval}"


def window_lines(cutoff: pd.Timestamp, rows: pd.DataFrame) -> list[str]:
    """One window's table: every model, both tasks, customers with history and cold-start."""
    means = rows.set_index(["group", "model", "task", "metric"])
    ndcg = rows[(rows["metric"] == "ndcg") & (rows["group"] == "history")]
    customers = rows[rows["metric"] == "ndcg"].groupby(["group", "task"])["customers"].first()
    best = ndcg.groupby("task")["baseline"].first()

    def cell(model: str, task: str, metric: str = "ndcg", group: str = "history") -> str:
        key = (group, model, task, metric)
        return f"{means.loc[key, 'mean']:.4f}" if key in means.index else "-"

    def lift(model: str, task: str) -> str:
        return _lift(means.loc[("history", model, task, "ndcg")])

    lines = [f"## Window from {cutoff.date()}", "",
             f"Customers with history: {customers.get(('history', 'all'), 0):,} ('all'), "
             f"{customers.get(('history', 'novel'), 0):,} ('novel'); cold-start: "
             f"{customers.get(('cold-start', 'all'), 0):,} and "
             f"{customers.get(('cold-start', 'novel'), 0):,}. Best baselines by NDCG: "
             f"{best.get('all')} on 'all', {best.get('novel')} on 'novel'.", "",
             "| model | all NDCG | lift | novel NDCG | lift | all recall | novel recall "
             "| cold all NDCG | cold novel NDCG |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    novel = ndcg[ndcg["task"] == "novel"].sort_values("mean", ascending=False)
    for model in novel["model"]:
        lines.append(f"| {model} | {cell(model, 'all')} | {lift(model, 'all')} | "
                     f"{cell(model, 'novel')} | {lift(model, 'novel')} | "
                     f"{cell(model, 'all', 'recall')} | {cell(model, 'novel', 'recall')} | "
                     f"{cell(model, 'all', group='cold-start')} | "
                     f"{cell(model, 'novel', group='cold-start')} |")
    return [*lines, ""]


def write(args: argparse.Namespace, table: pd.DataFrame, summary: pd.DataFrame,
          tuned: pd.DataFrame, fits: pd.DataFrame, overhead: dict, windows: list) -> None:
    from training.rolling import BASELINES, LEVEL, ROUNDS
    from training.tune import OBJECTIVE

    info = machine()
    first, last = windows[0].cutoff, windows[-1].cutoff
    ending = ("the last ends with the data" if not args.skip
              else f"{args.skip} windows of the data after them left out")
    lines = [
        "# Quality benchmark: UCI Online Retail, rolling origin", "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `{args.command}` on "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB.", "",
        f"{len(windows)} consecutive test windows of {WINDOW_DAYS} days, cut-offs "
        f"{first.date()} to {last.date()} "
        f"({ending}). In each, every model trains on what came before the cut-off; 'tuned' configs "
        f"were searched on the {args.folds} validation window(s) of {WINDOW_DAYS} days before "
        f"that cut-off (objective: geometric mean of {' and '.join(OBJECTIVE)}, over the "
        f"windows), so no tuning saw its test window. k = 10.", "",
        f"Lift: relative difference of the mean to the window's best plain baseline (of "
        f"{', '.join(f'{b} default' for b in BASELINES)}, the best per task and metric), over "
        f"the same customers, with a {LEVEL:.0%} percentile interval from {ROUNDS:,} "
        f"bootstrap resamples of those customers. Intervals are for customers with training "
        f"history; cold-start customers (none before the cut-off) get the same regional "
        f"fallback from every model and are shown apart.", "",
        "## Summary over the windows (customers with history)", "",
        "Mean of the windows' NDCG@10 and recall@10; lift: the mean of the windows' lifts, "
        "its interval from the same resamples; worst: the lowest window's lift; above 0: "
        "windows whose interval lies above zero.", "",
    ]
    for task in ("all", "novel"):
        part = summary[summary["task"] == task]
        ndcg = part[part["metric"] == "ndcg"].set_index("model")
        recall = part[part["metric"] == "recall"].set_index("model")
        lines += [f"### Task '{task}'", "",
                  "| model | NDCG | lift | worst | above 0 | recall | lift | worst |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for model in ndcg.sort_values("mean", ascending=False).index:
            n, r = ndcg.loc[model], recall.loc[model]
            lines.append(f"| {model} | {n['mean']:.4f} | {_lift(n)} | "
                         f"{n['worst_lift'] * 100:+.1f}% | {n['windows_above_zero']}/"
                         f"{n['windows']} | {r['mean']:.4f} | {_lift(r)} | "
                         f"{r['worst_lift'] * 100:+.1f}% |")
        lines.append("")
    for window in windows:
        lines += window_lines(window.cutoff, table[table["cutoff"] == window.cutoff])
    if not tuned.empty:
        lines += ["## Tuned configurations", "", "| window | model | trials | tuning s | config |",
                  "| --- | --- | ---: | ---: | --- |"]
        lines += [f"| {pd.Timestamp(r.cutoff).date()} | {r.model} | {r.trials} | "
                  f"{r.tuning_s:.0f} | `{r.params}` |" for r in tuned.itertuples(index=False)]
        lines.append("")
    mean_fit = fits.groupby("model")["fit_s"].mean()
    lines += ["## Fit seconds at the default config (mean over the windows)", "",
              "| model | fit s |", "| --- | ---: |"]
    lines += [f"| {model} | {seconds:.1f} |" for model, seconds in mean_fit.items()]
    lines += ["", "## ALS on the full data: library fit against the pipeline around it", "",
              "| step | seconds |", "| --- | ---: |"]
    lines += [f"| {step} | {seconds:.2f} |" for step, seconds in overhead.items()]
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
