"""Serving benchmark: a real ``bentoml serve`` on 127.0.0.1 with the Online Retail champion and
every rule on, loaded at fixed request rates from a separate process (bench/load.py).

    uv run python bench/latency.py [--seconds 20] [--rates 50,100,200,300] [--reuse]

Runs the same load with the service's garbage-collector freeze on and off, measures
/newsletter throughput, and writes bench/results/serving.md and serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from serving import process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ONLINE_RETAIL, RESULTS, ROOT, machine

NOW = "2011-12-09T12:50:00"  # Online Retail ends here: lifecycle and windows as of then
PORT = 3377


def prepare(work: Path) -> list[str]:
    """Import, features, train ALS, promote and publish the champion; the customer ids."""
    from features.importers import import_online_retail
    from features.snapshot import build_snapshot, load_snapshot
    from serving.models import import_model
    from training.pipeline import prepare as split
    from training.pipeline import train
    from training.tracking import promote, registered_folder, use_tracking

    import_online_retail(ONLINE_RETAIL, work / "dataset")
    build_snapshot(work / "dataset", work / "snapshot")
    client = use_tracking(f"sqlite:///{work / 'mlflow.db'}")
    train(split(work / "snapshot"), "als")
    promote(client, force=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder, version = registered_folder(client, into=Path(tmp))
        import_model(folder, version)
    return load_snapshot(work / "snapshot").features.customer_state["customer_id"].tolist()


def start_server(work: Path, key: str, gc_freeze: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NBO_API_KEYS": key, "NBO_ADMIN_API_KEYS": secrets.token_hex(8),
           "NBO_NOW": NOW, "NBO_HOME": str(work), "NBO_GC_FREEZE": str(gc_freeze).lower(),
           "NBO_CONSENT_DB_URL": f"sqlite:///{work / 'consent.db'}"}
    server = process.start(PORT, env, work / "serve.log")
    try:
        process.wait_ready(server, f"http://127.0.0.1:{PORT}", work / "serve.log", 180)
    except RuntimeError as error:
        stop_server(server)
        raise SystemExit(str(error)) from None
    return server


def stop_server(server: subprocess.Popen[bytes]) -> None:
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def load(key: str, rate: float, seconds: float, customers: Path) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), f"http://127.0.0.1:{PORT}", key,
         "--rate", str(rate), "--seconds", str(seconds), "--customers", str(customers)],
        capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def newsletter_rate(key: str, customers: list[str], calls: int = 4) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    started, served = time.perf_counter(), 0
    for i in range(calls):
        batch = customers[i * 1000:(i + 1) * 1000]
        response = httpx.post(f"http://127.0.0.1:{PORT}/newsletter",
                              json={"customers": batch}, headers=headers, timeout=120)
        response.raise_for_status()
        served += len(batch)
    return served / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rates", default="50,100,200,300")
    parser.add_argument("--reuse", action="store_true",
                        help="Serve the champion a previous run published (skip training).")
    args = parser.parse_args()
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"skipped: {ONLINE_RETAIL} is absent (it lives in ../shared)")
    work = ROOT / "bench" / "work" / "serving"
    work.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    ids = work / "customers.txt"
    if args.reuse and ids.exists():
        customers = ids.read_text().split()
    else:
        customers = prepare(work)
        ids.write_text("\n".join(customers))
    key = secrets.token_hex(16)
    rates = [float(r) for r in args.rates.split(",")]
    runs = []
    for gc_freeze in (False, True):
        server = start_server(work, key, gc_freeze)
        try:
            for rate in rates:
                result = load(key, rate, args.seconds, ids) | {"gc_freeze": gc_freeze}
                print(json.dumps(result), flush=True)
                runs.append(result)
            letters = newsletter_rate(key, customers) if gc_freeze else None
        finally:
            stop_server(server)
    write(runs, letters, args.seconds)


def write(runs: list[dict], letters: float | None, seconds: float) -> None:
    (RESULTS / "serving.json").write_text(json.dumps(
        {"runs": runs, "newsletter_customers_per_s": letters}, indent=2))
    best = max((r["rate"] for r in runs if r["gc_freeze"] and r["p99_ms"] < 50
                and not r["errors"]), default=None)
    info = machine()
    lines = [
        "# Serving benchmark: Online Retail champion (ALS) behind `bentoml serve`", "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/latency.py` on "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB (the load generator "
        f"shares the machine). One BentoML worker on 127.0.0.1, every rule on (eligibility, "
        f"consent from the SQLite consent store, lifecycle, exclusions, contact policy from the "
        f"feedback log, diversity), k = 10, reasons on. Open-loop load from a separate process "
        f"(`bench/load.py`, latency counted from when each request was due), {seconds:.0f} s "
        f"per rate, random customers of the data set.", "",
        "| GC freeze | rate (req/s) | achieved | p50 ms | p95 ms | p99 ms | max ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(f"| {'on' if r['gc_freeze'] else 'off'} | {r['rate']:.0f} | "
                     f"{r['achieved_rps']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['max_ms']:.0f} | {r['errors']} |")
    lines += ["", f"Highest rate with p99 under 50 ms (GC freeze on, no errors): "
                  f"{best if best is None else f'{best:.0f} req/s'}.", ""]
    if letters is not None:
        lines.append(f"`/newsletter`: {letters:,.0f} customers per second (4 calls of 1,000). "
                     "Online Retail has no consent table, so most of its customers get 'no "
                     "e-mail consent' and cost little: this figure is an upper bound.")
    lines += [
        "", "## Where the stalls come from", "",
        "With BentoML's defaults the worker's median stays near 5 ms but the tail explodes at "
        "200 req/s. A process that has imported the service and loaded this model holds "
        "about 225,000 tracked Python objects (BentoML, MLflow, pandas, the model's context), "
        "and one full garbage collection over them took 122 ms when measured by itself; the "
        "collector runs such passes as allocations pile up, the event loop stops meanwhile, "
        "and at 200 req/s a request arrives every 5 ms, so each pause queues dozens of them. "
        "The service therefore runs `gc.collect(); gc.freeze()` once the model is loaded "
        "(setting `NBO_GC_FREEZE`, on by default), which moves those objects out of "
        "the collector's scans; the rows above with the freeze off and on are the same server "
        "code and load otherwise.",
    ]
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
