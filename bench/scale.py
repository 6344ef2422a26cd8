"""Past one machine: the feature build in pandas against Dask, on generated shops of 1M and 10M
customers, and the batch newsletter over 1M customers.

    uv run python bench/scale.py [--sizes 1000000 10000000] [--workers 2] [--work DIR]
                                 [--stages generate pandas dask newsletter] [--one-process N]

Every stage runs in its own process. A shop is generated once per size (in chunks of 50,000
customers) and kept in ``--work``; each stage's figures are kept beside it, so a run can add a
stage without redoing the others. The pandas build runs where the machine's memory holds it
(its peak grows by about 6.2 GB per million customers), the Dask build on a local cluster of
``--workers`` processes, each reporting its own peak memory. The newsletter stage fits the
default blend on the pandas snapshot (so it runs for the sizes the pandas build ran for) and
writes the four blocks for every customer on Dask (and with ``--one-process N`` for N of them
in one process).
Results go to bench/results/scale.md and scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import machine  # noqa: E402  (the benchmarks' shared machine description)

RESULTS = ROOT / "bench" / "results"
PANDAS_GB_PER_MILLION = 6.2  # measured in bench/results/pipeline.md
STAGES = ("generate", "pandas", "dask", "newsletter")
NEWSLETTER_BLOCKS = ("profile", "lifecycle", "last_visit", "regional")


def peak_gb() -> float:
    """This process's own peak resident memory. Linux's ``VmHWM`` starts anew in a spawned
    process; ``ru_maxrss`` carries the parent's peak over (a worker started by a client that
    had fitted a model reported the client's)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2  # KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def run_stage(stage: str, work: Path, customers: int, workers: int, sample: int
              ) -> dict[str, Any]:
    """Runs inside the child process."""
    shop = work / f"shop-{customers}"
    started = time.perf_counter()
    detail: dict[str, Any] = {}
    if stage == "generate":
        from features.generate import ShopSpec, generate_shop

        detail = generate_shop(ShopSpec(customers=customers), shop)
    elif stage == "pandas":
        from features.snapshot import build_snapshot

        detail = {"rows": build_snapshot(shop, work / f"pandas-{customers}")["rows"]}
    elif stage == "dask":
        from features.partitioned import build_snapshot_dask
        from nbo.jobs.cluster import dask_client

        with dask_client(workers=workers) as client:
            started = time.perf_counter()  # the cluster's start is not the build's time
            manifest = build_snapshot_dask(client, shop, work / f"dask-{customers}")
            seconds = time.perf_counter() - started
            worker_peaks = sorted(client.run(peak_gb).values())
        # what the projection reads, kept with the figures (the folders may be gone)
        events = shop / "events.parquet"
        detail = {"rows": manifest["rows"], "workers": workers,
                  "worker_peak_gb": [round(gb, 2) for gb in worker_peaks],
                  "partitions": len(list((work / f"dask-{customers}" / "customer_state.parquet"
                                          ).glob("part-*"))),
                  "events_bytes": sum(f.stat().st_size for f in events.rglob("*")
                                      if f.is_file()) if events.is_dir()
                  else events.stat().st_size}
        return {"seconds": seconds, "peak_gb": peak_gb(), "detail": detail}
    elif stage == "newsletter":
        return newsletter_stage(work, customers, workers, sample)
    else:
        raise SystemExit(f"unknown stage {stage}")
    return {"seconds": time.perf_counter() - started, "peak_gb": peak_gb(), "detail": detail}


def newsletter_stage(work: Path, customers: int, workers: int, sample_size: int
                     ) -> dict[str, Any]:
    """The default blend fitted on the whole pandas snapshot and put in a BentoML store of
    its own, every customer with e-mail consent (double opt-in) in a store of its own; then
    the four blocks for every customer on Dask (timed once every worker holds the model,
    whose load and check are timed apart), and for ``sample_size`` of them in this one
    process."""
    import pandas as pd

    snapshot_path = work / f"pandas-{customers}"
    model = work / f"blend-{customers}"
    os.environ.update({
        "BENTOML_HOME": str(work / f"bentoml-{customers}"),
        "NBO_HOME": str(work / f"home-{customers}"),
        "NBO_CONSENT_DB_URL": f"sqlite:///{work / f'store-{customers}.db'}",
        "NBO_ERASURE_KEY": "the-benchmarks-erasure-key",
        "BENTOML_DO_NOT_TRACK": "true",
    })
    from features.settings import Settings
    from features.snapshot import load_snapshot
    from nbo.jobs.cluster import dask_client
    from nbo.jobs.newsletter import letters_table, served_holder
    from nbo.jobs.newsletter_dask import letters_on_dask, served_on_workers
    from serving.decision_log import DecisionLog
    from serving.models import import_model
    from serving.store import open_store
    from training.data import TrainData
    from training.models import create
    from training.pipeline import write_serving_context

    snapshot = load_snapshot(snapshot_path)
    now = snapshot.now
    os.environ["NBO_NOW"] = now.isoformat()
    fit_seconds = None
    if not (model / "model.json").exists():
        started = time.perf_counter()
        create("blend", {}).fit(TrainData.from_features(snapshot.features)).save(model)
        write_serving_context(snapshot, model / "context")
        fit_seconds = time.perf_counter() - started
        import_model(model, "1")
    ids = snapshot.features.customer_state["customer_id"].astype(str).tolist()
    del snapshot
    settings = Settings()
    store = open_store(settings)
    consent = pd.DataFrame({"customer_id": ids, "purpose": "email", "granted": True,
                            "double_opt_in": True, "updated_at": now, "source": "bench"})
    store.seed_consents(consent, "bench: e-mail for all")
    del consent
    sample = ids[:sample_size]
    one_seconds, one = None, pd.DataFrame()
    if sample:
        log = DecisionLog(store, settings.decision_log_days, settings.current_time)
        holder = served_holder(settings, store)
        started = time.perf_counter()
        one = letters_table(holder, sample, NEWSLETTER_BLOCKS, now.to_pydatetime(), log=log)
        one_seconds = time.perf_counter() - started
        log.close()
        del holder
    store.close()
    with dask_client(workers=workers) as client:
        started = time.perf_counter()
        with served_on_workers(client, settings):
            load_seconds = time.perf_counter() - started
            started = time.perf_counter()
            table = letters_on_dask(client, settings, ids, NEWSLETTER_BLOCKS,
                                    now.to_pydatetime(), loaded=True)
            seconds = time.perf_counter() - started
        worker_peaks = sorted(client.run(peak_gb).values())
    mailed = int(table.loc[table["no_mail"].isna(), "customer_id"].nunique())
    same = one.equals(table.iloc[:len(one)].reset_index(drop=True)) if len(one) else None
    return {"seconds": seconds, "peak_gb": peak_gb(), "detail": {
        "customers": len(ids), "mailed": mailed, "blocks": int(table["block"].notna().sum()),
        "per_s": round(len(ids) / seconds), "workers": workers,
        "worker_peak_gb": [round(gb, 2) for gb in worker_peaks],
        "model_load_seconds": round(load_seconds, 1),
        "one_process_customers": len(sample),
        "one_process_per_s": round(len(sample) / one_seconds) if one_seconds else None,
        "one_process_same_letters": same,
        "blend_fit_seconds": round(fit_seconds, 1) if fit_seconds else None}}


def measure(stage: str, work: Path, customers: int, workers: int, sample: int
            ) -> dict[str, Any]:
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--work", str(work),
         "--sizes", str(customers), "--workers", str(workers), "--one-process", str(sample)],
        stdout=subprocess.PIPE, text=True, env=env, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"stage {stage} of {customers:,} customers failed "
                         f"(exit {done.returncode}); its error is above.")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--one-process", type=int, default=0, metavar="N",
                        help="newsletter: also write N customers' letters in one process "
                        "(it loads and checks the model once more)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args.sizes[0], args.workers,
                                   args.one_process),
                         default=str))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    memory_gb = float(machine()["memory_gb"])  # type: ignore[arg-type]
    for customers in args.sizes:
        for stage in args.stages:
            kept = args.work / f"result-{stage}-{customers}.json"
            if stage == "generate" and (args.work / f"shop-{customers}" / "shop.json").exists():
                continue
            if stage == "newsletter" and not (args.work / f"pandas-{customers}").exists():
                continue  # the blend is fitted on the pandas snapshot
            if stage == "pandas" and customers / 1e6 * PANDAS_GB_PER_MILLION > 0.8 * memory_gb:
                kept.write_text(json.dumps({"skipped": (
                    f"needs about {customers / 1e6 * PANDAS_GB_PER_MILLION:.0f} GB at "
                    f"{PANDAS_GB_PER_MILLION} GB per million customers; this machine has "
                    f"{memory_gb:.0f} GB")}))
                continue
            print(f"{stage}: {customers:,} customers", file=sys.stderr, flush=True)
            figures = measure(stage, args.work, customers, args.workers, args.one_process)
            kept.write_text(json.dumps(figures, default=str))
    write_results(args.work)


def write_results(work: Path) -> None:
    """Every stage's figures kept in ``work``, as one table, with those of earlier runs in
    bench/results/scale.json that this one did not measure again."""
    measured = {}
    previous = RESULTS / "scale.json"
    if previous.exists():
        for row in json.loads(previous.read_text())["stages"]:
            measured[row["stage"], row["customers"]] = row
    for kept in sorted(work.glob("result-*.json")):
        _, stage, customers = kept.stem.split("-")
        measured[stage, int(customers)] = {"stage": stage, "customers": int(customers),
                                           **json.loads(kept.read_text())}
    rows = list(measured.values())
    rows.sort(key=lambda r: (r["customers"], STAGES.index(r["stage"])
                             if r["stage"] in STAGES else 99))
    info = machine()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(
        {"run_at": stamp, "machine": info, "stages": rows}, indent=2, default=str) + "\n")
    lines = [
        "# Scale benchmark", "",
        f"Written {stamp} by `bench/scale.py`; each stage ran in its own process (peak = that "
        "process's maximum resident memory; a Dask worker's peak is its own process's).", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; "
        f"Python {info['python']}, pandas {info['pandas']}, pyarrow {info['pyarrow']}.", "",
        "| customers | stage | seconds | peak GB (client) | peak GB per worker | what |",
        "| ---: | --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['customers']:,} | {row['stage']} | | | | skipped: "
                         f"{row['skipped']} |")
            continue
        detail = row.get("detail", {})
        counts = detail.get("rows", detail)
        shown = ", ".join(f"{k} {v:,}" for k, v in counts.items()
                          if k in ("events", "interactions", "customer_state", "customers"))
        if row["stage"] == "newsletter":
            shown = (f"{detail['per_s']:,} customers/s on {detail['workers']} workers once "
                     f"each held the model (its load and check: "
                     f"{detail['model_load_seconds']:,.0f} s); {detail['mailed']:,} mailed, "
                     f"{detail['blocks']:,} blocks")
            if detail["one_process_per_s"]:
                shown += (f"; {detail['one_process_per_s']:,}/s in one process "
                          f"({detail['one_process_customers']:,} customers, the same "
                          f"letters: {detail['one_process_same_letters']})")
        workers = ", ".join(f"{gb:.2f}" for gb in detail.get("worker_peak_gb", []))
        lines.append(f"| {row['customers']:,} | {row['stage']} | {row['seconds']:.1f} | "
                     f"{row['peak_gb']:.2f} | {workers} | {shown} |")
    lines += projection(rows, work)
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def projection(rows: list[dict[str, Any]], work: Path) -> list[str]:
    """A cluster's partitions, shuffles, time and memory per worker for a shop of 100M events,
    from the Dask builds measured: time from the largest, memory per worker as a line through
    the smallest and the largest against the events each worker took."""
    built = sorted((r for r in rows if r["stage"] == "dask" and "skipped" not in r),
                   key=lambda r: r["customers"])
    if not built:
        return []
    largest = built[-1]
    customers, detail = largest["customers"], largest["detail"]
    events, workers = detail["rows"]["events"], detail["workers"]
    parts = detail.get("partitions") or len(list(
        (work / f"dask-{customers}" / "customer_state.parquet").glob("part-*")))
    per_partition = events / max(parts, 1)
    rate = events / largest["seconds"] / workers  # events per second per worker
    target, cluster = 100_000_000, 16
    shop = work / f"shop-{customers}" / "events.parquet"
    stored = (detail["events_bytes"] / events if "events_bytes" in detail
              else shop.stat().st_size / events if shop.is_file() else float("nan"))
    lines = ["", "## A shop of 100M events on a cluster", "",
             f"Projected from the Dask builds above; the largest: {customers:,} customers, "
             f"{events:,} events in {parts} partitions, {largest['seconds']:.0f} s on "
             f"{workers} workers ({rate:,.0f} events per second per worker).", ""]
    lines.append(
        f"- Partitions: the default follows the events' row groups; at the "
        f"{per_partition:,.0f} events per partition measured here, about "
        f"{target / per_partition:,.0f} partitions; `--partitions` sets more or fewer.")
    points = [(r["detail"]["rows"]["events"] / r["detail"]["workers"] / 1e6,
               max(r["detail"]["worker_peak_gb"])) for r in (built[0], largest)]
    if len(built) > 1 and points[1][0] > points[0][0]:
        slope = (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])
        base = points[0][1] - slope * points[0][0]
        each = target / cluster / 1e6
        lines.append(
            f"- Memory per worker: its peak is in the shuffle and grew with the events each "
            f"worker took, not with the size of a partition (the same here): "
            f"{points[0][1]:.2f} GB at {points[0][0]:.1f}M events per worker, "
            f"{points[1][1]:.2f} GB at {points[1][0]:.1f}M. On that line ({base:.2f} GB + "
            f"{slope * 1000:.0f} MB per million events), {cluster} workers taking "
            f"{each:.1f}M events each would peak near {base + slope * each:.1f} GB; more "
            "workers take less each.")
    lines += [
        "- Shuffles: one per table keyed by customer (events, customers, feedback), each moving "
        "its table once between workers, spilled to the workers' disks by Dask's shuffle as "
        "it goes; " + (
            f"the events weigh about {stored:.0f} bytes each as Parquet here, so about "
            f"{target * stored / 1e9:,.1f} GB of events cross the network (more in memory as "
            "pandas)" if stored == stored  # not NaN
            else "the events' size as Parquet was not kept with this build's figures (it "
            "ran before they were), so the network's share is not projected") +
        ". Consents are validated where they are read, without a shuffle.",
        f"- Time: at the whole build's rate here (its clustering included), "
        f"{target / rate / 60:,.0f} worker-minutes of "
        f"work: about {target / rate / 60 / cluster:,.1f} minutes on {cluster} workers if it "
        "divides evenly and the shuffle keeps up (the network and the workers' disks set "
        "that), plus the clustering of the segments on the client.",
        "- The client: the segments' clustering gathers a few numbers per customer (its "
        "summary, and a buyer's category shares); its peak here was "
        f"{largest['peak_gb']:.2f} GB for {customers:,} customers, about "
        f"{largest['peak_gb'] * 1e9 / customers:,.0f} bytes per customer, so it follows the "
        "number of customers, not of events (MiniBatchKMeans clusters past 100,000 buyers).",
    ]
    return lines


if __name__ == "__main__":
    main()
