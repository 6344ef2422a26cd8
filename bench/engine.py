"""The engine in-process, without HTTP: the default blend with its propensity calibration
(as training registers it) on a generated shop or on Online Retail, /rank per customer and
the newsletter's four blocks for every customer (in parts of 1,000, as the batch job writes
them), for this checkout and (``--against REF``) a git revision of it checked out beside,
measured alternately in the same run.

    uv run python bench/engine.py [--against REF] [--customers 3000] [--rounds 2]
                                  [--online-retail]

Results go to bench/results/engine.md (a section per data set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv"

CHILD = r'''
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])  # this checkout's bench folder: the model is built alike
from pipeline import calibrated_blend
from features.generate import ShopSpec, generate_shop
from features.importers import import_online_retail
from features.snapshot import load_snapshot
from serving.engine import Engine, PolicySettings, Request
from serving.policy import Consent
from serving.store import Store

work, customers, source = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if not (work / "model" / "model.json").exists():
    if source == "generated":
        generate_shop(ShopSpec(customers=customers, seed=5), work / "shop")
    else:
        import_online_retail(Path(source), work / "shop")
calibrated_blend(work / "shop", work)
now = load_snapshot(work / "snapshot").now.to_pydatetime()
import inspect
keyed = "erasure_key" in inspect.signature(Store).parameters  # a revision before the key
store = Store(f"sqlite:///{work}/store-{time.time_ns()}.db",
              *(["the-benchmarks-erasure-key"] if keyed else []))
engine = Engine.load(work / "model", "1", store, PolicySettings())
everyone = [str(c) for c in engine.customers.names]
ids = everyone[:600]
everything = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)
for c in ids[:50]:
    engine.rank(Request(c), now, everything)
per_rank = []
for _ in range(5):
    started = time.perf_counter()
    for c in ids:
        engine.rank(Request(c), now, everything)
    per_rank.append((time.perf_counter() - started) / len(ids) * 1000)
for c in everyone:
    store.set_consents(c, {"email": (True, True)}, "bench", now)
blocks = ("profile", "lifecycle", "last_visit", "regional")
letters = []
for _ in range(3):
    started = time.perf_counter()
    for first in range(0, len(everyone), 1000):
        engine.newsletter(everyone[first:first + 1000], blocks, now)
    letters.append(len(everyone) / (time.perf_counter() - started))
from serving.ingest import event_rows
from serving.schemas import EventIn
products = [str(p) for p in engine.offers.ids]
calls = [[EventIn(event_id=f"{n}-{i}", customer_id=everyone[(n * 25 + i) % len(everyone)],
                  product_id=products[(n * 97 + i * 13) % len(products)], event_type="view")
          for i in range(25)] for n in range(250)]
per_call = []
for n, call in enumerate(calls):  # as /events does its work: the contract, then the store
    started = time.perf_counter()
    store.append_events(event_rows(call, engine.product_ids, now), now)
    if n >= 50:
        per_call.append((time.perf_counter() - started) * 1000)
per_live = []  # the same customers again, each now with two or three views since the snapshot
for _ in range(5):
    started = time.perf_counter()
    for c in ids:
        engine.rank(Request(c), now, everything)
    per_live.append((time.perf_counter() - started) / len(ids) * 1000)
print(json.dumps({"rank_ms": sorted(per_rank)[2], "newsletter_per_s": max(letters),
                  "events_ms": statistics.median(per_call),
                  "rank_live_ms": sorted(per_live)[2],
                  "customers": len(everyone), "offers": len(engine.offers)}))
'''


def measure(tree: Path, work: Path, customers: int, source: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(work), str(customers), source,
                          str(ROOT / "bench")], cwd=tree,
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git revision to measure beside this checkout")
    parser.add_argument("--customers", type=int, default=3000,
                        help="of the generated shop")
    parser.add_argument("--online-retail", action="store_true",
                        help=f"measure on Online Retail ({ONLINE_RETAIL}) instead")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.online_retail and not ONLINE_RETAIL.exists():
        raise SystemExit(f"{ONLINE_RETAIL} is absent: it lives in ../shared, beside the "
                         "project checkout")
    source = str(ONLINE_RETAIL) if args.online_retail else "generated"
    scratch = Path(tempfile.mkdtemp(prefix="nbo-bench-engine-"))
    trees = {"this checkout": ROOT}
    if args.against:
        reference = scratch / "reference"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(reference),
                        args.against], cwd=ROOT, check=True)
        trees = {f"reference {args.against}": reference} | trees
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        for _ in range(args.rounds):
            for name, tree in trees.items():
                figures[name].append(measure(tree, scratch / name.replace(" ", "-"),
                                             args.customers, source))
    finally:
        if args.against:
            subprocess.run(["git", "worktree", "remove", "--force", str(scratch / "reference")],
                           cwd=ROOT, check=False)
    first = next(iter(figures.values()))[0]
    data = ("Online Retail" if args.online_retail else "a generated shop") + \
        f" ({first['customers']:,} customers, {first['offers']:,} offers)"
    command = "uv run python bench/engine.py" + (
        f" --against {args.against}" if args.against else "") + (
        " --online-retail" if args.online_retail else "") + (
        f" --customers {args.customers}" if args.customers != 3000 and not args.online_retail
        else "")
    lines = [
        f"## {'Online Retail' if args.online_retail else 'Generated shop'}",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, Python "
        f"{platform.python_version()}, one process; default blend with its propensity "
        f"calibration on {data}, every rule on; {args.rounds} alternating rounds, each the "
        "median of 5 passes over 600 customers (rank) and the best of 3 passes over every "
        "customer, in parts of 1,000, all with e-mail consent (newsletter, four blocks); "
        "/events: the median of 200 calls of 25 views (after 50 to warm up), checked by the "
        "data contract and stored, in one process (the service checks in a process of its "
        "own per worker: these are the two processes' times together); then /rank of the "
        "same 600 customers again, each now with two or three of those views since the "
        "snapshot (read from the store, weighed and folded into the history: the serving "
        "benchmark's customers have a few by its later rates).",
        f"Produced by `{command}`.",
        "",
        "| tree | /rank ms per customer (per round) | newsletter customers/s (per round) "
        "| /events ms per call of 25 (per round) | /rank ms with live events (per round) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, rounds in figures.items():
        ranks = ", ".join(f"{r['rank_ms']:.2f}" for r in rounds)
        mails = ", ".join(f"{r['newsletter_per_s']:,.0f}" for r in rounds)
        middle = statistics.median(r["rank_ms"] for r in rounds)
        events = ", ".join(f"{r['events_ms']:.1f}" if "events_ms" in r else "-" for r in rounds)
        live = ", ".join(f"{r['rank_live_ms']:.2f}" for r in rounds)
        lines.append(f"| {name} | {ranks} (median {middle:.2f}) | {mails} | {events} | {live} |")
    write_section(RESULTS / "engine.md", lines)
    print("\n".join(lines))


def write_section(path: Path, lines: list[str]) -> None:
    """Replace the section of ``path`` with the heading of ``lines`` (add it if new), keeping
    the other data set's."""
    heading = lines[0]
    sections: dict[str, str] = {}
    if path.exists():
        for part in path.read_text().split("\n## ")[1:]:
            sections["## " + part.splitlines()[0]] = "## " + part.rstrip()
    sections[heading] = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# The engine in-process\n\n" + "\n\n".join(
        sections[key] for key in sorted(sections, reverse=True)) + "\n")


if __name__ == "__main__":
    main()
