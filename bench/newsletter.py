"""The batch newsletter on Online Retail with the blend champion as training registers it
(with its propensity calibration), every customer with e-mail consent, the four blocks: the
batch job in one process, composed a batch at a time and (the reference, in the same run) one
letter at a time, and on a local Dask cluster of 1 and ``--workers`` worker processes.

    uv run python bench/newsletter.py [--workers 2] [--repeat 5] [--work DIR] [--against REF]

The customers are the data set's, ``--repeat`` times over (a list long enough to keep every
worker busy). Each timing is the best of ``--rounds``; the model's load and check in each
worker are timed apart. ``--against REF`` measures a checkout of that git revision first, on
the same model, snapshot and store, then this checkout, each in a process of its own with its
own code on the path. Results go to bench/results/newsletter.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ONLINE_RETAIL, RESULTS, ROOT, calibrated_blend, machine

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
    parser.add_argument("--against", help="a git revision to measure before this checkout")
    parser.add_argument("--figures", type=Path, help=argparse.SUPPRESS)  # a child's answer
    args = parser.parse_args()
    if not ONLINE_RETAIL.exists():
        raise SystemExit(f"{ONLINE_RETAIL} is absent: it lives in ../shared, beside the "
                         "project checkout")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.figures:  # one tree's figures, in a process with that tree's code on the path
        args.figures.write_text(json.dumps(measure(args)))
        return
    trees = {"this checkout": ROOT}
    scratch = Path(tempfile.mkdtemp(prefix="nbo-bench-newsletter-"))
    if args.against:
        trees = {f"reference {args.against}": scratch / "reference"} | trees
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(scratch / "reference"),
                        args.against], cwd=ROOT, check=True)
    figures: dict[str, dict[str, Any]] = {}
    try:
        for label, tree in trees.items():
            answer = scratch / f"figures{len(figures)}.json"
            subprocess.run([sys.executable, __file__, "--workers", str(args.workers),
                            "--repeat", str(args.repeat), "--rounds", str(args.rounds),
                            "--work", str(args.work), "--figures", str(answer)],
                           env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
            figures[label] = json.loads(answer.read_text())
    finally:
        if args.against:
            subprocess.run(["git", "worktree", "remove", "--force",
                            str(scratch / "reference")], cwd=ROOT, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    write(figures, args)


def measure(args: argparse.Namespace) -> dict[str, object]:
    """The figures of the code on this process's path: each path's best time, and whether
    every path wrote the same letters."""
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
    return {"rows": rows, "same": bool(same), "offers": len(holder.engine.offers),
            "customers": len(customers), "letters": len(ids)}


def write(figures: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    info = machine()
    first = next(iter(figures.values()))
    reference = (f" The reference {args.against} is a checkout of that git revision, "
                 "measured first, on the same model, snapshot and store."
                 if args.against else "")
    lines = [
        "# The batch newsletter on Online Retail",
        "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/newsletter.py` on "
        f"{info['cpu']}, {info['cores']} cores. The default blend with its propensity "
        f"calibration, as training registers it ({first['offers']:,} offers); "
        f"{first['customers']:,} customers, all with e-mail consent, {args.repeat} times over "
        f"({first['letters']:,} letters); the four blocks; each letter in the decision log, "
        f"as the job writes it. Best of {args.rounds} runs (the one-by-one reference: of "
        f"{max(1, args.rounds - 1)}).{reference}",
        "",
        "| path | tree | processes | seconds | letters/s | model load and check per worker, s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {label} | {n} | {s:.1f} | {first['letters'] / s:,.0f} | "
          f"{'' if load is None else f'{load:.1f}'} |"
          for row in range(len(first["rows"])) for label, tree in figures.items()
          for name, n, s, load in [tree["rows"][row]]],
        "",
        *[f"Every path of {label} wrote the same letters: {'yes' if tree['same'] else 'NO'}."
          for label, tree in figures.items()],
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "newsletter.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not all(tree["same"] for tree in figures.values()):
        raise SystemExit("the paths wrote different letters")


if __name__ == "__main__":
    main()
