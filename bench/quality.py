"""Quality benchmark on the UCI Online Retail data: every candidate, default and tuned.

    uv run python bench/quality.py [--trials-scale 1.0]

The test split trains before 2011-11-09 and tests on the last month. Hyper-parameters are
tuned on the three 30-day validation windows before it (the objective is their mean), so tuning
never sees the test month; the tuned configs are then fitted and scored on the test split.
Results go to bench/results/quality.md and quality.csv.
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

CUTOFF = pd.Timestamp("2011-11-09")
FOLDS, FOLD_DAYS = 3, 30
TRIALS = {"popularity": 6, "als": 30, "bpr": 12, "itemknn": 15, "ease": 15, "lightfm": 4,
          "blend": 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "quality")
    parser.add_argument("--trials-scale", type=float, default=1.0)
    parser.add_argument("--models", nargs="*", default=list(TRIALS))
    args = parser.parse_args()
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"skipped: {ONLINE_RETAIL} is absent")

    from features.importers import import_online_retail
    from features.snapshot import build_snapshot, load_snapshot
    from training.pipeline import compare_candidates, prepare, validation_folds
    from training.tracking import use_tracking
    from training.tune import tune

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    import_online_retail(ONLINE_RETAIL, work / "dataset")
    build_snapshot(work / "dataset", work / "snapshot")
    snapshot = load_snapshot(work / "snapshot")
    test = prepare(snapshot, cutoff=CUTOFF)
    validation = validation_folds(test, FOLDS, FOLD_DAYS)
    use_tracking(f"sqlite:///{work / 'mlflow.db'}")
    storage = f"sqlite:///{work / 'optuna.db'}"

    defaults = compare_candidates(test, args.models).assign(config="default")
    tuned_params = {}
    tuning_seconds = {}
    for kind in args.models:
        started = time.perf_counter()
        trials = max(1, round(TRIALS[kind] * args.trials_scale))
        study = f"bench-{kind}-{datetime.now(UTC):%Y%m%d%H%M%S}"
        result = tune(test, kind, trials, storage, study_name=study, seed=42,
                      validation=validation)
        tuned_params[kind] = result.best_params
        tuning_seconds[kind] = time.perf_counter() - started
        print(f"tuned {kind}: {result.best_params} ({tuning_seconds[kind]:.0f} s)", flush=True)
    tuned = compare_candidates(test, args.models, tuned_params).assign(config="tuned")
    table = pd.concat([defaults, tuned], ignore_index=True)
    table.to_csv(RESULTS / "quality.csv", index=False)
    overhead = pipeline_overhead(test)
    write(table, tuned_params, tuning_seconds, overhead, test)


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


def write(table: pd.DataFrame, params: dict, tuning: dict, overhead: dict, test) -> None:  # type: ignore[no-untyped-def]
    info = machine()
    lines = [
        "# Quality benchmark: UCI Online Retail", "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/quality.py` on "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB.", "",
        f"Test split: train before {CUTOFF.date()}, test on the purchases after it "
        f"({len(test.split.test_customers):,} customers with a test purchase, "
        f"{int(test.split.cold[test.split.test_customers].sum()):,} of them cold-start). "
        f"Tuned configs were chosen on the {FOLDS} windows of {FOLD_DAYS} days before the "
        f"cut-off (each trained on what came before it), objective = mean of NDCG@10 on both "
        f"tasks over the windows. k = 10; fit seconds are on the test split's training data.",
        "",
    ]
    for task in ("all", "novel"):
        part = table[table["task"] == task].sort_values("ndcg", ascending=False)
        lines += [f"## Task '{task}'", "",
                  "| model | config | NDCG | recall | precision | MAP | hit rate | coverage "
                  "| cold NDCG | fit s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in part.itertuples(index=False):
            lines.append(f"| {r.model} | {r.config} | {r.ndcg:.4f} | {r.recall:.4f} | "
                         f"{r.precision:.4f} | {r.map:.4f} | {r.hit_rate:.4f} | "
                         f"{r.coverage:.4f} | {r.cold_ndcg:.4f} | {r.fit_s:.1f} |")
        lines.append("")
    lines += ["## Tuned configurations", ""]
    lines += [f"- {kind} ({tuning[kind]:.0f} s of tuning): `{p}`" for kind, p in params.items()]
    lines += ["", "## ALS on the full data: library fit against the pipeline around it", "",
              "| step | seconds |", "| --- | ---: |"]
    lines += [f"| {step} | {seconds:.2f} |" for step, seconds in overhead.items()]
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
