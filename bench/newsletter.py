"""The batch newsletter on Online Retail with the blend champion as training registers it
(with its propensity calibration), every customer with e-mail consent, the four blocks: the
batch job in one process, composed a batch at a time and (the reference, in the same run) one
letter at a time, and on a local Dask cluster of 1 and ``--workers`` worker processes.

    uv run python bench/newsletter.py [--workers 2] [--repeat 5] [--work DIR]

The customers are the data set's, ``--repeat`` times over (a list long enough to keep every
worker busy). Each timing is the best of ``--rounds``; the model's load and check in each
worker are timed apart. Results go to bench/results/newsletter.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ONLINE_RETAIL, RESULTS, calibrated_blend, machine

from features.settings import quiet_third_parties

# one BLAS thread, as the nbo command sets it: otherwise OpenBLAS's threads spin on the other
# core after each product (about 120 us of a core per letter in the one-process path)
quiet_third_parties()

BLOCKS = ("profile", "lifecycle", "last_visit", "regional")
ERASURE_KEY = "the-benchmarks-erasure-key"


def champion(work: Path) -> Path:
    """The default blend of Online Retail with its calibration, as training makes it."""
    from features.importers import import_online_retail

    if not (work / "model" / "model.json").exists():
        import_online_retail(ONLINE_RETAIL, work / "dataset")
    return calibrated_blend(work / "dataset", work)


def best_of(rounds: int, run):  # type: ignore[no-untyped-def]
    """The shortest of ``rounds`` runs, and the last run's result."""
    seconds, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return min(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "nbo-bench-newsletter")
    args = parser.parse_args()
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"{ONLINE_RETAIL} is absent: it lives in ../shared, beside the "
                         "project checkout")
    args.work.mkdir(parents=True, exist_ok=True)
    model = champion(args.work)
    from features.snapshot import load_snapshot

    now = load_snapshot(args.work / "snapshot").now
    os.environ.update({
        "BENTOML_HOME": str(args.work / "bentoml"), "NBO_HOME": str(args.work / "home"),
        "NBO_CONSENT_DB_URL": f"sqlite:///{args.work / 'store.db'}",
        "NBO_ERASURE_KEY": ERASURE_KEY, "BENTOML_DO_NOT_TRACK": "true",
        "NBO_NOW": now.isoformat()})
    import pandas as pd

    from features.settings import Settings
    from nbo.jobs.cluster import dask_client
    from nbo.jobs.newsletter import letters_table, served_holder
    from nbo.jobs.newsletter_dask import letters_on_dask, served_on_workers
    from serving.decision_log import DecisionLog
    from serving.models import import_model
    from serving.newsletter import Newsletter
    from serving.store import open_store

    import_model(model, "1")
    settings = Settings()
    store = open_store(settings)
    holder = served_holder(settings, store)
    assert holder.engine is not None
    customers = [str(c) for c in holder.engine.customers.names]
    store.seed_consents(pd.DataFrame({
        "customer_id": customers, "purpose": "email", "granted": True, "double_opt_in": True,
        "updated_at": now, "source": "bench"}), "bench: e-mail for all")
    ids = customers * args.repeat
    moment = now.to_pydatetime()
    log = DecisionLog(store, settings.decision_log_days, settings.current_time)
    rows: list[tuple[str, int, float, float | None]] = []

    def one_process() -> pd.DataFrame:
        return letters_table(holder, ids, BLOCKS, moment, log=log)

    seconds, batched = best_of(args.rounds, one_process)
    rows.append(("one process, a batch at a time", 1, seconds, None))
    plain = Newsletter.plain
    Newsletter.plain = lambda *_: []  # type: ignore[assignment,method-assign]
    try:
        seconds, one_by_one = best_of(max(1, args.rounds - 1), one_process)
    finally:
        Newsletter.plain = plain  # type: ignore[method-assign]
    rows.append(("one process, one letter at a time (reference)", 1, seconds, None))
    same = batched.equals(one_by_one)
    log.close()
    store.close()
    for workers in sorted({1, args.workers}):
        with dask_client(workers=workers) as client:
            started = time.perf_counter()
            with served_on_workers(client, settings):
                load = time.perf_counter() - started
                seconds, table = best_of(args.rounds, lambda: letters_on_dask(
                    client, settings, ids, BLOCKS, moment, partition_size=1000, loaded=True))
            same = same and table.equals(batched)
        rows.append((f"Dask, {workers} worker process{'es' if workers > 1 else ''}", workers,
                     seconds, load))
    info = machine()
    lines = [
        "# The batch newsletter on Online Retail",
        "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/newsletter.py` on "
        f"{info['cpu']}, {info['cores']} cores. The default blend with its propensity "
        f"calibration, as training registers it ({len(holder.engine.offers):,} offers); "
        f"{len(customers):,} customers, all with e-mail consent, {args.repeat} times over "
        f"({len(ids):,} letters); the four blocks; each letter in the decision log, as the job "
        f"writes it. Best of {args.rounds} runs (the reference: of {max(1, args.rounds - 1)}).",
        "",
        "| path | processes | seconds | letters/s | model load and check per worker, s |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {n} | {s:.1f} | {len(ids) / s:,.0f} | "
          f"{'' if load is None else f'{load:.1f}'} |" for name, n, s, load in rows],
        "",
        f"Every path wrote the same letters: {'yes' if same else 'NO'}.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "newsletter.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not same:
        raise SystemExit("the paths wrote different letters")


if __name__ == "__main__":
    main()
