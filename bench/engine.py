"""The engine in-process, without HTTP: the default blend on a generated shop, /rank per
customer and the newsletter's four blocks per customer, for this checkout and (``--against
REF``) a git revision of it checked out beside, measured alternately in the same run.

    uv run python bench/engine.py [--against REF] [--customers 3000] [--rounds 2]

Results go to bench/results/engine.md.
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

CHILD = r'''
import json, sys, time
from pathlib import Path
from features.generate import ShopSpec, generate_shop
from features.snapshot import build_snapshot, load_snapshot
from serving.engine import Engine, PolicySettings, Request
from serving.policy import Consent
from serving.store import Store
from training.data import TrainData
from training.models import create
from training.pipeline import write_serving_context

work, customers = Path(sys.argv[1]), int(sys.argv[2])
if not (work / "model" / "model.json").exists():
    generate_shop(ShopSpec(customers=customers, seed=5), work / "shop")
    build_snapshot(work / "shop", work / "snap")
    snap = load_snapshot(work / "snap")
    create("blend", {}).fit(TrainData.from_features(snap.features)).save(work / "model")
    write_serving_context(snap, work / "model" / "context")
now = load_snapshot(work / "snap").now.to_pydatetime()
import inspect
keyed = "erasure_key" in inspect.signature(Store).parameters  # a revision before the key
store = Store(f"sqlite:///{work}/store-{time.time_ns()}.db",
              *(["the-benchmarks-erasure-key"] if keyed else []))
engine = Engine.load(work / "model", "1", store, PolicySettings())
ids = [str(c) for c in engine.customers.names[:600]]
everything = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)
for c in ids[:50]:
    engine.rank(Request(c), now, everything)
per_rank = []
for _ in range(5):
    started = time.perf_counter()
    for c in ids:
        engine.rank(Request(c), now, everything)
    per_rank.append((time.perf_counter() - started) / len(ids) * 1000)
for c in ids:
    store.set_consents(c, {"email": (True, True)}, "bench", now)
letters = []
for _ in range(3):
    started = time.perf_counter()
    engine.newsletter(ids, ("profile", "lifecycle", "last_visit", "regional"), now)
    letters.append(len(ids) / (time.perf_counter() - started))
print(json.dumps({"rank_ms": sorted(per_rank)[2], "newsletter_per_s": max(letters)}))
'''


def measure(tree: Path, work: Path, customers: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(work), str(customers)], cwd=tree,
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git revision to measure beside this checkout")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
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
                                             args.customers))
    finally:
        if args.against:
            subprocess.run(["git", "worktree", "remove", "--force", str(scratch / "reference")],
                           cwd=ROOT, check=False)
    against = f" --against {args.against}" if args.against else ""
    lines = [
        "# The engine in-process",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, Python "
        f"{platform.python_version()}; default blend on a generated shop of {args.customers:,} "
        f"customers, every rule on; {args.rounds} alternating rounds, each the median of 5 "
        "passes over 600 customers (rank) and the best of 3 (newsletter).",
        f"Produced by `uv run python bench/engine.py{against}`.",
        "",
        "| tree | /rank ms per customer (per round) | newsletter customers/s (per round) |",
        "| --- | --- | --- |",
    ]
    for name, rounds in figures.items():
        ranks = ", ".join(f"{r['rank_ms']:.2f}" for r in rounds)
        mails = ", ".join(f"{r['newsletter_per_s']:,.0f}" for r in rounds)
        middle = statistics.median(r["rank_ms"] for r in rounds)
        lines.append(f"| {name} | {ranks} (median {middle:.2f}) | {mails} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
