"""What the offer policy, the decision log and exploration add to a request, in-process (no
HTTP): the default blend on a generated shop with its propensity calibration, /rank per
customer without a policy, with the demo's policy (values, weights, context rules, a campaign,
fallbacks) but no budgets, with its budgets too (impressions taken from the SQLite store in
blocks), with each ranking put in the decision log as well (written in batches by the log's
thread), and with a tenth of the slots explored besides. The five are measured alternately in
one process, so the machine's drift hits them alike.

    uv run python bench/arbitration.py [--customers 3000] [--rounds 5]

Results go to bench/results/arbitration.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=600, help="per round and case")
    args = parser.parse_args()

    from sqlalchemy import func, select

    from features.generate import ShopSpec, generate_shop
    from features.snapshot import build_snapshot, load_snapshot
    from nbo.jobs.demo import POLICY
    from serving.decision_log import DecisionLog, ranking_row
    from serving.engine import Engine, PolicySettings, Request
    from serving.explore import Exploration
    from serving.offer_policy import load, parse
    from serving.policy import Consent
    from serving.store import Store, decision_log
    from training.calibration import calibrate
    from training.models import create
    from training.pipeline import prepare, write_serving_context

    work = Path(tempfile.mkdtemp(prefix="nbo-bench-arbitration-"))
    generate_shop(ShopSpec(customers=args.customers, seed=5), work / "shop")
    build_snapshot(work / "shop", work / "snap")
    experiment = prepare(work / "snap", test_days=30)
    on_split = create("blend", {}).fit(experiment.split.data)
    calibration = calibrate(on_split, experiment.split, experiment.snapshot.feedback)
    snap = load_snapshot(work / "snap")
    from training.data import TrainData

    create("blend", {}).fit(TrainData.from_features(snap.features)).save(work / "model")
    write_serving_context(snap, work / "model" / "context", calibration=calibration)
    store = Store(f"sqlite:///{work / 'store.db'}", "the-benchmarks-erasure-key")
    engine = Engine.load(work / "model", "1", store, PolicySettings())
    now = snap.now.to_pydatetime()
    demo = load(POLICY)
    unbudgeted = parse(POLICY.read_text().split("\nbudgets:")[0], "demo policy, no budgets")
    # budgets that never run out within the benchmark: every served offer of theirs is
    # counted, none is refused
    budgeted = parse(POLICY.read_text().replace("limit: 500,", "limit: 100000000,")
                     .replace("limit: 2000,", "limit: 100000000,"), "demo policy")
    assert demo.policy.budgets and not unbudgeted.policy.budgets
    logged = "policy with budgets, decision log"
    exploring = "the same, 10% of slots explored"
    cases = {"no policy": None, "policy, no budgets": unbudgeted, "policy with budgets": budgeted,
             logged: budgeted, exploring: budgeted}
    plain = engine.settings
    explorer = replace(plain, exploration=Exploration(0.1, min_impressions=10**9))
    decisions = DecisionLog(store, 90, lambda: now)
    arbiters = {name: (engine.arbiter if v is None else None) for name, v in cases.items()}
    for name, versioned in cases.items():
        if versioned is not None:
            arbiters[name] = engine.use_policy(versioned)
    ids = [str(c) for c in engine.customers.names[:args.requests]]
    everything = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(args.rounds + 1):  # the first round warms up, and is not counted
        for name in cases:
            engine.arbiter = arbiters[name]  # type: ignore[assignment]
            engine.settings = explorer if name == exploring else plain
            for customer in ids:
                started = time.perf_counter()
                ranking = engine.rank(Request(customer), now, everything)
                if name in (logged, exploring):
                    decisions.record([ranking_row(ranking, "web", "rank", now)])
                if round_:
                    timings[name].append((time.perf_counter() - started) * 1000)
    engine.arbiter = arbiters["policy with budgets"]  # type: ignore[assignment]
    engine.settings = plain
    used = store.budget_used(engine.arbiter.budget_keys(now))
    decisions.close()
    with store.engine.connect() as db:
        rows = db.execute(select(func.count()).select_from(decision_log)).scalar_one()
    stats = {name: (np.percentile(t, 50), np.percentile(t, 95), np.percentile(t, 99))
             for name, t in timings.items()}
    base = stats["no policy"]
    lines = [
        "# What the offer policy, the decision log and exploration add to a request",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}. Default blend on a generated shop of "
        f"{args.customers:,} customers ({len(engine.offers):,} offers) with its propensity "
        f"calibration; `engine.rank` in-process (no HTTP) for {len(ids)} customers per round "
        f"and case, every rule on, {args.rounds} rounds after a warm-up round, the cases "
        "alternating. Produced by `uv run python bench/arbitration.py`.",
        "",
        "| case | p50 ms | p95 ms | p99 ms | added p50 ms | added p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (p50, p95, p99) in stats.items():
        lines.append(f"| {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {p50 - base[0]:+.2f} | "
                     f"{p99 - base[2]:+.2f} |")
    lines += [
        "",
        f"- The policy: `{POLICY.relative_to(ROOT)}` ({demo.version}); with budgets, "
        f"impressions taken from the store: "
        f"{', '.join(f'{k[0]} {v:,}' for k, v in used.items())} (served, or held in "
        "reserve: the store gives them in blocks of up to 20, so most answers write "
        "nothing).",
        f"- The decision log: {rows:,} rows written, in batches of at most 500 every half "
        "second by its thread; the request only queues its row.",
        "- Exploration: each slot explored with probability 0.1 among the 20 offers the "
        "blend rates best of those every rule allows (every offer counted as uncertain), "
        "each explored offer's probability estimated from 256 posterior draws.",
        "- Target: the added p99 at or under 1 ms. This is the engine's own cost per request; "
        "the HTTP benchmark (`bench/latency.py`) adds the service around it.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "arbitration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
