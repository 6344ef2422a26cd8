"""Time and peak memory of the data pipeline, each stage in its own process.

    uv run python bench/pipeline.py [--customers 1000000] [--work DIR]

Stages: Online Retail import and feature build (skipped, with the reason, where the shared file
is absent), then generation and feature build of a shop of ``--customers`` customers. Results
go to bench/results/pipeline.md and pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv"
RESULTS = ROOT / "bench" / "results"
TARGETS = {  # stage: (seconds, GB) from the foundation issue
    "online retail: import + features": (30.0, None),
    "shop: feature build": (300.0, 8.0),
}


def calibrated_blend(dataset: Path, work: Path) -> Path:
    """The default blend of ``dataset`` with its propensity calibration, as training
    registers it: the snapshot in ``work/snapshot``, the model folder ``work/model`` (built
    once; kept for later runs)."""
    from features.snapshot import build_snapshot
    from training.calibration import calibrate
    from training.data import TrainData
    from training.evaluate import fit_and_evaluate
    from training.models import create
    from training.pipeline import prepare, write_serving_context

    model = work / "model"
    if not (model / "model.json").exists():
        build_snapshot(dataset, work / "snapshot")
        experiment = prepare(work / "snapshot")
        candidate = create("blend", {})
        fit_and_evaluate(candidate, experiment.split, experiment.k, None)
        calibration = calibrate(candidate, experiment.split, experiment.snapshot.feedback)
        create("blend", {}).fit(TrainData.from_features(experiment.snapshot.features)).save(
            model)
        write_serving_context(experiment.snapshot, model / "context", calibration)
    return model


def run_stage(stage: str, work: Path, customers: int) -> None:
    """Runs inside the child process; prints one JSON line with its own figures."""
    started = time.perf_counter()
    detail: dict[str, object] = {}
    if stage == "or-import":
        from features.importers import import_online_retail

        report = import_online_retail(ONLINE_RETAIL, work / "online-retail")
        detail = {"rows_in": report.rows_in, "buckets": report.buckets}
    elif stage == "or-features":
        from features.snapshot import build_snapshot

        manifest = build_snapshot(work / "online-retail", work / "online-retail-snapshot")
        detail = {"rows": manifest["rows"]}
    elif stage == "shop-generate":
        from features.generate import ShopSpec, generate_shop

        detail = generate_shop(ShopSpec(customers=customers), work / "shop")
    elif stage == "shop-features":
        from features.snapshot import build_snapshot

        manifest = build_snapshot(work / "shop", work / "shop-snapshot")
        detail = {"rows": manifest["rows"]}
    else:
        raise SystemExit(f"unknown stage {stage}")
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_gb": peak_gb, "detail": detail}))


def measure(stage: str, work: Path, customers: int) -> dict[str, object]:
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--work", str(work),
         "--customers", str(customers)],
        capture_output=True, text=True, env=env, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(), "system": platform.platform(),
        "pandas": metadata.version("pandas"), "pyarrow": metadata.version("pyarrow"),
        "numpy": metadata.version("numpy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.work, args.customers)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    if ONLINE_RETAIL.exists():
        imported = measure("or-import", args.work, args.customers)
        built = measure("or-features", args.work, args.customers)
        rows += [
            {"stage": "online retail: import", **imported},
            {"stage": "online retail: feature build", **built},
            {"stage": "online retail: import + features",
             "seconds": imported["seconds"] + built["seconds"],  # type: ignore[operator]
             "peak_gb": max(imported["peak_gb"], built["peak_gb"])},  # type: ignore[type-var]
        ]
    else:
        notes.append(f"Online Retail skipped: {ONLINE_RETAIL} is absent.")
    generated = measure("shop-generate", args.work, args.customers)
    built = measure("shop-features", args.work, args.customers)
    rows += [{"stage": "shop: generate", **generated}, {"stage": "shop: feature build", **built}]
    write_results(rows, notes, args.customers)


def write_results(rows: list[dict[str, object]], notes: list[str], customers: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    (RESULTS / "pipeline.json").write_text(json.dumps(
        {"run_at": stamp, "machine": info, "customers": customers, "stages": rows}, indent=2,
        default=str) + "\n")
    lines = [
        "# Pipeline benchmark", "",
        f"Run {stamp} by `bench/pipeline.py`, each stage in its own process "
        f"(peak = that process's maximum resident memory).", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; "
        f"Python {info['python']}, pandas {info['pandas']}, pyarrow {info['pyarrow']}, "
        f"numpy {info['numpy']}.", "",
        f"Generated shop: {customers:,} customers.", "",
        "| stage | seconds | peak GB | target | met |", "| --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        target = TARGETS.get(str(row["stage"]))
        goal, met = "", ""
        if target:
            seconds, gb = target
            goal = f"< {seconds:.0f} s" + (f", < {gb:.0f} GB" if gb else "")
            ok = float(row["seconds"]) < seconds and (gb is None or float(row["peak_gb"]) < gb)
            met = "yes" if ok else "NO"
        lines.append(f"| {row['stage']} | {float(row['seconds']):.1f} | "
                     f"{float(row['peak_gb']):.2f} | {goal} | {met} |")
    for row in rows:
        detail = row.get("detail")
        if detail:
            lines += ["", f"{row['stage']}: `{json.dumps(detail, default=str)}`"]
    lines += ["", *notes] if notes else []
    (RESULTS / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
