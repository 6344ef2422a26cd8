"""Serving benchmark: a real ``bentoml serve`` on 127.0.0.1 with an Online Retail model and
every rule on, loaded at fixed request rates from a separate process (bench/load.py).

    uv run python bench/latency.py [--seconds 15] [--rates 100,...,800] [--models als,blend]
                                   [--workers 2] [--event-share 0.1] [--reuse]
                                   [--against REF [--runs 2]]
    uv run python bench/latency.py --configs   # the settings study, ALS on one worker

By default serves each model (ALS and the blend the demo promotes) with NBO_WORKERS workers,
a share of the load posting events to /events, and measures per rate the latency and errors,
then how long an acknowledged event takes to show in the next answer of any worker, the
ranking's in-process time, and /newsletter throughput; writes bench/results/serving.md and
serving.json. ``--against REF`` serves each model from a checkout of that git revision too,
under the same load right before this checkout's, each on a store of its own (this machine's
speed drifts from hour to hour: a figure of another run compares badly); ``--runs 2`` serves
each tree twice, reference first and last. ``--configs`` runs
the same load against the service's defaults and against configurations that take one of
them back (BentoML's own defaults first) and counts the worker's full garbage collections
(bench/results/serving-configs.md).
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
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from serving import process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ONLINE_RETAIL, RESULTS, ROOT, machine

NOW = "2011-12-09T12:50:00"  # Online Retail ends here: lifecycle and windows as of then
PORT = 3377
ERASURE_KEY = "the-benchmarks-erasure-key"  # its stores outlive a run (--reuse)


def prepare(work: Path, kinds: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """Import, features, train each model kind and publish it; the customer ids, the product
    ids and each kind's BentoML tag."""
    from features.importers import import_online_retail
    from features.snapshot import build_snapshot, load_snapshot
    from serving.models import import_model
    from training.pipeline import prepare as split
    from training.pipeline import train
    from training.tracking import promote, registered_folder, use_tracking

    import_online_retail(ONLINE_RETAIL, work / "dataset")
    build_snapshot(work / "dataset", work / "snapshot")
    client = use_tracking(f"sqlite:///{work / 'mlflow.db'}")
    experiment = split(work / "snapshot")
    tags = {}
    for kind in kinds:
        train(experiment, kind)
        promote(client, force=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder, version = registered_folder(client, into=Path(tmp))
            tags[kind] = import_model(folder, version)
    snapshot = load_snapshot(work / "snapshot")
    return (snapshot.features.customer_state["customer_id"].tolist(),
            snapshot.products["product_id"].astype(str).tolist(), tags)


# the service's settings that decide its tail latency: the first row is how BentoML serves
# with its defaults (a span per request, the 60 s request timer, no GC freeze), the others
# take back one of nbo's defaults each
CONFIGS = {
    "BentoML defaults": {"NBO_TRACING": "true", "NBO_REQUEST_TIMEOUT_SECONDS": "60",
                         "NBO_GC_FREEZE": "false"},
    "spans on, 60 s timer": {"NBO_TRACING": "true", "NBO_REQUEST_TIMEOUT_SECONDS": "60"},
    "GC freeze off": {"NBO_GC_FREEZE": "false"},
    "nbo defaults": {},
}


def start_server(work: Path, key: str, settings: dict[str, str], tree: Path = ROOT
                 ) -> subprocess.Popen[bytes]:
    """The service of the checkout ``tree`` (its code before the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "NBO_API_KEYS": key,
           "NBO_ADMIN_API_KEYS": secrets.token_hex(8),
           "NBO_ERASURE_KEY": ERASURE_KEY,
           "NBO_NOW": NOW, "NBO_HOME": str(work),
           "NBO_CONSENT_DB_URL": f"sqlite:///{work / 'consent.db'}", **settings}
    if not process.port_is_free(PORT):
        raise SystemExit(f"port {PORT} is in use (another service?): stop it first")
    server = process.start(PORT, env, work / "serve.log", cwd=tree)
    try:
        process.wait_ready(server, f"http://127.0.0.1:{PORT}", work / "serve.log", 180)
    except RuntimeError as error:
        stop_server(server)
        raise SystemExit(str(error)) from None
    return server


def ranking_ms(work: Path, customers: list[str], tag: str, n: int = 2000) -> float:
    """Milliseconds of one /rank's work without HTTP: the service's own ``rank_response``
    (consent and feedback-log queries, the model's scores, every rule, reasons, counters and
    the response body)."""
    from serving.engine import Engine, PolicySettings, Request
    from serving.models import newest
    from serving.service import rank_response
    from serving.store import Store

    store = Store(f"sqlite:///{work / 'consent.db'}", ERASURE_KEY)
    try:
        engine = Engine.load(Path(newest(tag).path), "bench", store, PolicySettings())
        now = datetime.fromisoformat(NOW)

        def rank(customer: str) -> None:
            rank_response(engine, store, Request(customer, "web", 10, now), now)

        for customer in customers[:200]:  # warm up
            rank(customer)
        started = time.perf_counter()
        for customer in customers[:n]:
            rank(customer)
        return (time.perf_counter() - started) / min(n, len(customers)) * 1000
    finally:
        store.close()


def full_collections() -> dict[str, float]:
    """The worker's full (generation 2) garbage collections so far, from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{PORT}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        for name, key in (("nbo_gc_pause_seconds_count", "count"),
                          ("nbo_gc_pause_seconds_sum", "seconds"),
                          ("nbo_gc_longest_pause_seconds", "longest")):
            if line.startswith(name + '{generation="2"}'):
                found[key] = float(line.rsplit(" ", 1)[1])
    return found


def stop_server(server: subprocess.Popen[bytes]) -> None:
    process.stop(server)


def load(key: str, rate: float, seconds: float, customers: Path,
         event_share: float = 0.0, products: Path | None = None, per_call: int = 1
         ) -> dict[str, float]:
    extra = ["--event-share", str(event_share), "--products", str(products),
             "--events-per-call", str(per_call)] if products else []
    output = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), f"http://127.0.0.1:{PORT}", key,
         "--rate", str(rate), "--seconds", str(seconds), "--customers", str(customers),
         *extra], capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


WARM_UP_SECONDS = 5


def warm_up(key: str, rates: list[float], customers: Path) -> None:
    """A few seconds of the lowest rate, not counted: a worker's first requests (its first
    calls into compiled code, its pools, its events check process) belong to its start."""
    load(key, min(rates), WARM_UP_SECONDS, customers)


def workers_ready(workers: int) -> None:
    seen = process.ready_workers(f"http://127.0.0.1:{PORT}", workers, 180)
    if len(seen) < workers:
        raise SystemExit(f"only {len(seen)} of {workers} workers became ready")


def visibility(key: str, customers: list[str], trials: int = 100, attempts: int = 20
               ) -> dict[str, float]:
    """Milliseconds from an acknowledged purchase of a customer's top offer to the first
    /rank answer (each on a new connection, so from any worker) that no longer offers it.
    One client for all calls: a new httpx client costs 40 ms of its own (its TLS context),
    which a client per call counted in every figure."""
    import random

    rng = random.Random(1)
    waited, needed, missed = [], [], 0
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10, headers={
            "Authorization": f"Bearer {key}", "Connection": "close"}) as client:
        for _ in range(trials):
            customer = rng.choice(customers)
            offers = client.post("/rank", json={"customer_id": customer}).json()["offers"]
            if not offers:
                continue
            top = offers[0]["product_id"]
            client.post("/events", json={"events": [
                {"event_id": uuid.uuid4().hex, "customer_id": customer, "product_id": top,
                 "event_type": "purchase"}]}).raise_for_status()
            acknowledged = time.perf_counter()
            for attempt in range(1, attempts + 1):
                answer = client.post("/rank", json={"customer_id": customer}).json()
                if top not in [o["product_id"] for o in answer["offers"]]:
                    waited.append((time.perf_counter() - acknowledged) * 1000)
                    needed.append(attempt)
                    break
            else:
                missed += 1  # still offered after every attempt
    ms = sorted(waited) or [float("nan")]
    return {"trials": len(waited) + missed, "missed": missed, "p50_ms": ms[len(ms) // 2],
            "p99_ms": ms[int(len(ms) * 0.99)], "max_ms": ms[-1],
            "max_attempts": max(needed, default=0)}


MAILED = 2000  # customers given e-mail consent for the newsletter measure


def grant_email(work: Path, customers: list[str]) -> None:
    """Online Retail has no consents: give these customers e-mail consent with double opt-in
    in the consent store, so their newsletter is composed in full."""
    from datetime import datetime

    from serving.store import Store

    store = Store(f"sqlite:///{work / 'consent.db'}", ERASURE_KEY)
    try:
        for customer in customers:
            store.set_consents(customer, {"email": (True, True)}, "benchmark",
                               datetime.fromisoformat(NOW))
    finally:
        store.close()


def fresh_store(work: Path, customers: list[str]) -> None:
    """A new store (no events or feedback of an earlier run) with the mailed customers'
    consent."""
    for name in ("consent.db", "consent.db-wal", "consent.db-shm"):
        (work / name).unlink(missing_ok=True)
    grant_email(work, customers[:MAILED])


def newsletter_rate(key: str, customers: list[str], per_call: int = 1000
                    ) -> dict[str, float]:
    """Customers per second and blocks per mailed customer, ``per_call`` customers a call."""
    started, blocks, mailed = time.perf_counter(), 0, 0
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        for start in range(0, len(customers), per_call):
            response = client.post(f"http://127.0.0.1:{PORT}/newsletter",
                                   json={"customers": customers[start:start + per_call]})
            response.raise_for_status()
            letters = response.json()["letters"]
            mailed += sum(1 for letter in letters if letter["blocks"])
            blocks += sum(len(letter["blocks"]) for letter in letters)
    seconds = time.perf_counter() - started
    return {"customers_per_s": len(customers) / seconds, "mailed": mailed,
            "blocks_per_mailed": blocks / max(mailed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rates", default="100,200,300,400,500,600,800")
    parser.add_argument("--models", default="als,blend")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--event-share", type=float, default=0.02,
                        help="Share of the requests that post events instead of ranking.")
    parser.add_argument("--events-per-call", type=int, default=25)
    parser.add_argument("--against", help="A git revision whose service is measured too, "
                        "under the same load, before this checkout's.")
    parser.add_argument("--runs", type=int, default=1,
                        help="With --against: runs of each tree per model, in the order "
                        "reference, this checkout, this checkout, reference, ... so that the "
                        "machine's drift during the benchmark favours neither.")
    parser.add_argument("--configs", action="store_true",
                        help="Run the settings study (ALS, one worker) instead.")
    parser.add_argument("--reuse", action="store_true",
                        help="Serve the models a previous run published (skip training).")
    args = parser.parse_args()
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"skipped: {ONLINE_RETAIL} is absent (it lives in ../shared)")
    work = ROOT / "bench" / "work" / "serving"
    work.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    ids, products_file, tags_file = (work / "customers.txt", work / "products.txt",
                                     work / "tags.json")
    kinds = ["als"] if args.configs else args.models.split(",")
    tags = json.loads(tags_file.read_text()) if tags_file.exists() else {}
    if args.reuse and ids.exists() and all(kind in tags for kind in kinds):
        customers, products = ids.read_text().split(), products_file.read_text().split()
    else:
        customers, products, tags = prepare(work, kinds)
        ids.write_text("\n".join(customers))
        products_file.write_text("\n".join(products))
        tags_file.write_text(json.dumps(tags))
    key = secrets.token_hex(16)
    rates = [float(r) for r in args.rates.split(",")]
    if args.configs:
        fresh_store(work, customers)
        settings_study(work, key, customers, ids, rates, args.seconds, tags["als"])
        return
    runs: list[dict] = []
    seen: dict[str, dict[str, float]] = {}
    letters: dict[str, dict[str, float]] = {}
    in_process: dict[str, float] = {}
    trees = {"": ROOT}
    if args.against:
        checkout = work / "reference"
        subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT,
                       check=False, capture_output=True)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(checkout),
                        args.against], cwd=ROOT, check=True)
        trees = {f" (reference {args.against})": checkout, "": ROOT}
    order = list(trees.items())
    rounds = args.runs if args.against else 1
    try:
        for kind in kinds:
            fresh_store(work, customers)
            in_process[kind] = ranking_ms(work, customers, tags[kind])
            print(json.dumps({kind: {"ranking_ms_in_process": in_process[kind]}}), flush=True)
            for run in range(rounds):
                for suffix, tree in order if run % 2 == 0 else order[::-1]:
                    label = kind + suffix + (f", run {run + 1}" if rounds > 1 else "")
                    fresh_store(work, customers)  # without another run's events and feedback
                    runs += [r | {"this_checkout": tree == ROOT, "kind": kind}
                             for r in serve(work, key, tree, label, tags[kind], rates, ids,
                                            products_file, customers, args, seen, letters)]
    finally:
        if args.against:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "reference")],
                           cwd=ROOT, check=False)
    reference = yardstick(work, key, tags["als"] if "als" in tags else tags[kinds[0]], ids,
                          rates, args)
    write_models(runs, seen, letters, in_process, args, reference)


def serve(work: Path, key: str, tree: Path, label: str, tag: str, rates: list[float],
          ids: Path, products: Path, customers: list[str], args: argparse.Namespace,
          seen: dict[str, dict[str, float]], letters: dict[str, dict[str, float]]
          ) -> list[dict]:
    """One model served from one checkout: every rate, then the visibility of an event and
    the newsletter's rate (into ``seen`` and ``letters``)."""
    server = start_server(work, key, {"NBO_WORKERS": str(args.workers), "NBO_MODEL_TAG": tag},
                          tree)
    runs = []
    try:
        workers_ready(args.workers)
        warm_up(key, rates, ids)
        for rate in rates:
            result = load(key, rate, args.seconds, ids, args.event_share, products,
                          args.events_per_call) | {"model": label}
            print(json.dumps(result), flush=True)
            runs.append(result)
        seen[label] = visibility(key, customers)
        letters[label] = newsletter_rate(key, customers[:MAILED], 250)
        print(json.dumps({label: {"visibility": seen[label], "newsletter": letters[label]}}),
              flush=True)
    finally:
        stop_server(server)
    return runs


REFERENCE = "plain Starlette"


def yardstick(work: Path, key: str, tag: str, ids: Path, rates: list[float],
              args: argparse.Namespace) -> list[dict]:
    """The same load on bench/yardstick.py (the model's top 10, nothing else) under uvicorn
    with as many workers: what the machine serves without the service around the model."""
    from serving.models import newest

    env = {**os.environ, "NBO_YARDSTICK_MODEL": str(newest(tag).path)}
    log = work / "yardstick.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "yardstick:app",
         "--port", str(PORT), "--workers", str(args.workers), "--no-access-log",
         "--log-level", "warning"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    runs = []
    try:
        workers_ready(args.workers)
        warm_up(key, rates, ids)
        for rate in rates:
            result = load(key, rate, args.seconds, ids) | {"model": REFERENCE}
            print(json.dumps(result), flush=True)
            runs.append(result)
    finally:
        stop_server(server)
    return runs


def write_models(runs: list[dict], seen: dict[str, dict[str, float]],
                 letters: dict[str, dict[str, float]], in_process: dict[str, float],
                 args: argparse.Namespace, reference: list[dict]) -> None:
    runs = runs + reference
    (RESULTS / "serving.json").write_text(json.dumps(
        {"workers": args.workers, "event_share": args.event_share,
         "events_per_call": args.events_per_call, "runs": runs,
         "visibility": seen, "newsletter": letters, "ranking_ms_in_process": in_process},
        indent=2))
    info = machine()
    lines = [
        "# Serving benchmark: Online Retail models behind `bentoml serve`", "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/latency.py` on "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB (the load generator "
        f"shares the machine). `NBO_WORKERS={args.workers}` BentoML workers on 127.0.0.1, "
        f"every rule on (eligibility, consent from the SQLite store, lifecycle, exclusions "
        f"with the live events, contact policy and dismissals from the feedback log, "
        f"diversity), the erasure check and the live-event read on every request, k = 10, "
        f"reasons on. Open-loop load from a separate process (`bench/load.py`, latency "
        f"counted from when each request was due), {WARM_UP_SECONDS} s of the lowest rate "
        f"not counted after each start, then {args.seconds:.0f} s per rate, random "
        f"customers of the data set; {args.event_share:.0%} of the requests post "
        f"{args.events_per_call} views by random customers to `/events` (so later rankings "
        f"of those customers score a history with live events). The {REFERENCE} rows are "
        f"the same load, without events, on `bench/yardstick.py`: the ALS model's top 10 "
        f"and nothing else, under uvicorn with as many workers, measured in the same run."
        + (f" Rows marked (reference {args.against}) serve the same model from a checkout of "
           f"git revision {args.against}, on a fresh store, "
           + (f"in {args.runs} runs per tree, in the order reference, this checkout, this "
              "checkout, reference: the machine's speed drifts during a run, and an order "
              "that alternates favours neither tree."
              if args.runs > 1 else "right before this checkout's.")
           if args.against else ""),
        "", f"Produced by `uv run python {' '.join(['bench/latency.py', *sys.argv[1:]])}`.",
        "", "| model | rate (req/s) | achieved | p50 ms | p95 ms | p99 ms | max ms | errors "
        "| events posted | events p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(runs, key=lambda r: (r["rate"], r["model"])):
        lines.append(f"| {r['model']} | {r['rate']:.0f} | {r['achieved_rps']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['max_ms']:.0f} | {r['errors']} | {r['events_posted']} | "
                     f"{r.get('events_p99_ms', float('nan')):.1f} |")
    shares = [r["generator_cpu_share"] for r in runs if "generator_cpu_share" in r]
    if shares:
        lines += ["", f"The load generator (aiohttp) used at most {max(shares):.0%} of one core "
                  f"at any rate: the service, not the generator, sets these figures."]
    lines += ["", "Targets: p99 at or under 10 ms at 500 req/s; no collapse below 800 req/s.",
              ""]
    for kind in in_process:
        mine = [r for r in runs if r.get("kind") == kind and r["this_checkout"]]
        held = [max((r["rate"] for r in mine if r["model"] == label and r["p99_ms"] <= 10
                     and not r["errors"]), default=None)
                for label in dict.fromkeys(r["model"] for r in mine)]
        lines.append(f"- {kind}: highest rate with p99 at or under 10 ms and no errors: "
                     f"{', '.join('none' if rate is None else f'{rate:.0f}' for rate in held)}"
                     f"{' (by run)' if len(held) > 1 else ''}; the ranking itself in-process "
                     f"{in_process[kind]:.2f} ms per request")
    lines += ["", "From an acknowledged `/events` purchase of a customer's top offer to the "
              "first `/rank` answer that no longer offers it (each call on a new connection, "
              "so any worker answers; no load besides):", "",
              "| model | trials | p50 ms | p99 ms | max ms | most calls needed | never "
              "reflected in 20 calls |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {kind} | {v['trials']} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | "
              f"{v['max_ms']:.1f} | {v['max_attempts']} | {v['missed']} |"
              for kind, v in seen.items()]
    lines += ["", f"`/newsletter`, calls of 250 customers with e-mail consent ({MAILED:,} "
              "customers, all blocks):", "", "| model | customers/s | blocks per customer |",
              "| --- | ---: | ---: |"]
    lines += [f"| {kind} | {v['customers_per_s']:,.0f} | {v['blocks_per_mailed']:.2f} |"
              for kind, v in letters.items()]
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")


def settings_study(work: Path, key: str, customers: list[str], ids: Path, rates: list[float],
                   seconds: float, tag: str) -> None:
    runs, collections = [], {}
    in_process = ranking_ms(work, customers, tag)
    print(json.dumps({"ranking_ms_in_process": in_process}), flush=True)
    letters: dict[str, dict[str, float]] = {}
    for config, settings in CONFIGS.items():
        server = start_server(work, key, {"NBO_WORKERS": "1", "NBO_MODEL_TAG": tag,
                                          **settings})
        try:
            before = full_collections()
            for rate in rates:
                result = load(key, rate, seconds, ids) | {"config": config}
                print(json.dumps(result), flush=True)
                runs.append(result)
            after = full_collections()
            collections[config] = {"count": after["count"] - before["count"],
                                   "seconds": after["seconds"] - before["seconds"],
                                   "longest": after["longest"]}
            print(json.dumps({config: collections[config]}), flush=True)
            if not settings:
                letters = {"with e-mail consent": newsletter_rate(key, customers[:MAILED]),
                           "without": newsletter_rate(key, customers[MAILED:2 * MAILED])}
                print(json.dumps(letters), flush=True)
        finally:
            stop_server(server)
    write(runs, collections, letters, in_process, seconds)


def write(runs: list[dict], collections: dict[str, dict[str, float]],
          letters: dict[str, dict[str, float]], in_process: float, seconds: float) -> None:
    (RESULTS / "serving-configs.json").write_text(json.dumps(
        {"configs": CONFIGS, "runs": runs, "full_collections": collections,
         "newsletter": letters, "ranking_ms_in_process": in_process}, indent=2))
    best = max((r["rate"] for r in runs if r["config"] == "nbo defaults"
                and r["p99_ms"] < 50 and not r["errors"]), default=None)
    info = machine()
    lines = [
        "# Serving benchmark: Online Retail champion (ALS) behind `bentoml serve`", "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/latency.py` on "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB (the load generator "
        f"shares the machine). One BentoML worker on 127.0.0.1, every rule on (eligibility, "
        f"consent from the SQLite consent store, lifecycle, exclusions, contact policy from the "
        f"feedback log, diversity), k = 10, reasons on, BentoML's access log and metrics on. "
        f"Open-loop load from a separate process (`bench/load.py`, latency counted from when "
        f"each request was due), {seconds:.0f} s per rate, random customers of the data set.",
        "", "Configurations (service settings):", "",
        *[f"- {name}: " + (", ".join(f"`{k}={v}`" for k, v in settings.items())
                           or "none changed (spans off, 10 s request timer, GC freeze on)")
          for name, settings in CONFIGS.items()],
        "", "| configuration | rate (req/s) | achieved | p50 ms | p95 ms | p99 ms | max ms "
        "| errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(f"| {r['config']} | {r['rate']:.0f} | {r['achieved_rps']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['max_ms']:.0f} | {r['errors']} |")
    lines += ["", f"Highest rate with p99 under 50 ms (nbo defaults, no errors): "
                  f"{best if best is None else f'{best:.0f} req/s'} (the highest rate tried "
                  f"was {max(r['rate'] for r in runs):.0f}).", "",
              "Full garbage collections of the worker during all the rates above, from its "
              "`/metrics` (`nbo_gc_pause_seconds`):", "",
              "| configuration | full collections | total ms | longest ms |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {c['count']:.0f} | {c['seconds'] * 1000:.0f} | "
              f"{c['longest'] * 1000:.1f} |" for name, c in collections.items()]
    if letters:
        lines += [
            "", f"`/newsletter` (calls of 1,000 customers, blocks profile, lifecycle, last "
            f"visit, regional; nbo defaults). Online Retail has no consent table, so "
            f"{MAILED:,} of its customers were given e-mail consent with double opt-in for "
            f"this measure:", "",
            "| customers | customers/s | mailed | blocks per mailed customer |",
            "| --- | ---: | ---: | ---: |"]
        lines += [f"| {MAILED:,} {who} | {r['customers_per_s']:,.0f} | {r['mailed']:,.0f} | "
                  f"{r['blocks_per_mailed']:.2f} |" for who, r in letters.items()]
    lines += ["", STALLS, "", f"The ranking itself (consent and feedback-log queries, the "
              f"model's scores, every rule, reasons, the response body) costs "
              f"{in_process:.2f} ms per request measured in-process by the same code; the rest "
              f"of the median is HTTP, BentoML and the load generator on the same cores."]
    (RESULTS / "serving-configs.md").write_text("\n".join(lines) + "\n")


STALLS = """## Where the stalls come from

With BentoML's defaults the worker's median stays near 3 ms but its tail grows with the request
rate, because a request's objects outlive it. BentoML's `TimeoutMiddleware` starts a timer
(`loop.call_later(timeout, ...)`) for every request and never cancels it; the timer holds the
request's context and, through it, the request's OpenTelemetry span (created even when no trace
is sampled) for the whole timeout, 60 s by default. At 200 req/s that keeps about 12,000
requests' spans, futures and contexts alive, which every full garbage collection has to scan
while the event loop stands still; at 200 req/s each 50 ms pause queues 10 requests. When this
was diagnosed (a `gc.callbacks` probe in the worker counting what survived each full
collection), the survivors grew by about 15 objects per request (`_Span`, `BoundedList`,
`Context`, `Future`, `TimerHandle`, ...) to over 150,000, and full collections from 12 to 100
ms within 25 s of load. Besides, the process holds about 260,000 long-lived objects once the
service is imported and the model loaded (BentoML, MLflow, pandas, the model's context), which
full collections also scan unless frozen.

The service therefore (1) skips the tracing middleware unless `NBO_TRACING` asks for spans
(every path is excluded in BentoML's tracing configuration), (2) uses a 10 s request timeout
(`NBO_REQUEST_TIMEOUT_SECONDS`; a newsletter call of 1,000 customers takes about half a
second), which bounds what the timers keep, and (3) freezes the long-lived objects out of the
collector's scans once the model is loaded (`NBO_GC_FREEZE`). The configurations above take
these back on the same code and load; the full-collection table shows the pauses each leaves."""


if __name__ == "__main__":
    main()
