"""The health check a model passes before it serves: every customer it knows and an unknown
one scored in batches, the scores checked finite. Timed on the Online Retail blend (the model
the demo and the quality benchmark promote) and on generated shops of more customers, ALS
and the blend, as ``Engine.load`` runs it.

    uv run python bench/check.py [--customers 20000,80000]

Results go to bench/results/check.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import ONLINE_RETAIL, RESULTS, machine

KEY = "the-benchmarks-erasure-key"


def timed(snapshot: Path, kind: str, work: Path) -> dict[str, object]:
    from features.snapshot import load_snapshot
    from serving.engine import Engine, PolicySettings
    from serving.store import Store
    from training.data import TrainData
    from training.models import create
    from training.pipeline import write_serving_context

    snap = load_snapshot(snapshot)
    folder = work / f"{snapshot.name}-{kind}"
    create(kind, {}).fit(TrainData.from_features(snap.features)).save(folder)
    write_serving_context(snap, folder / "context")
    engine = Engine.load(folder, "1", Store(f"sqlite:///{folder}/store.db", KEY),
                         PolicySettings())
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        engine.check()
        runs.append(time.perf_counter() - started)
    return {"data": snapshot.name, "model": kind, "customers": len(engine.customers),
            "offers": len(engine.offers), "seconds": min(runs),
            "per_1000": min(runs) / len(engine.customers) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", default="20000,80000")
    args = parser.parse_args()
    from features.generate import ShopSpec, generate_shop
    from features.importers import import_online_retail
    from features.snapshot import build_snapshot

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if ONLINE_RETAIL.exists():
            import_online_retail(ONLINE_RETAIL, work / "online-retail")
            build_snapshot(work / "online-retail", work / "online-retail-snapshot")
            rows.append(timed(work / "online-retail-snapshot", "blend", work))
        else:
            print(f"{ONLINE_RETAIL} is absent: the Online Retail row is left out")
        for n in (int(x) for x in args.customers.split(",")):
            generate_shop(ShopSpec(customers=n, seed=3), work / f"shop-{n}")
            build_snapshot(work / f"shop-{n}", work / f"shop-{n}-snapshot")
            for kind in ("als", "blend"):
                rows.append(timed(work / f"shop-{n}-snapshot", kind, work))
                print(rows[-1], flush=True)
    about = machine()
    lines = [
        "# Health check of every customer before a model serves",
        "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} by `bench/check.py` on "
        f"{about['cpu']}, {about['cores']} cores, {about['memory_gb']} GB. `Engine.check`: "
        "every customer the model knows and an unknown one scored in batches of 1,024 "
        "through the model's answer, every score checked finite, then the fallbacks' "
        "popularity; best of 3. It runs once per model load, before the model serves.",
        "",
        "| data | model | customers | offers | seconds | seconds per 1,000 customers |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *[f"| {r['data']} | {r['model']} | {r['customers']:,} | {r['offers']:,} | "
          f"{r['seconds']:.2f} | {r['per_1000']:.3f} |" for r in rows],
        "",
        "The time grows with customers times offers. A reload checks in the model watcher's "
        "thread while the model in use keeps serving; only a cold start waits for it "
        "(`/readyz` answers 503 until then and gives `checked_seconds` after).",
        "",
    ]
    (RESULTS / "check.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
