"""Fit time and peak memory of every model against the size of the catalogue, on generated
shops of 5,000, 20,000 and 50,000 offers (three customers per offer), each fit in a process
of its own; where EASE stops fitting this machine, and what leaving it out of the blend
costs in quality on the generated shop.

    uv run python bench/catalogue.py [--offers 5000,20000,50000] [--timeout 600]

Results go to bench/results/catalogue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import RESULTS, machine

MODELS = ("popularity", "als", "bpr", "itemknn", "follows", "lightfm", "ease", "blend")
CUSTOMERS_PER_OFFER = 3

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
from features.snapshot import load_snapshot
from training.data import TrainData
from training.models import create

snapshot, kind = sys.argv[1], sys.argv[2]
data = TrainData.from_features(load_snapshot(Path(snapshot)).features)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model = create(kind, {})
started = time.perf_counter()
try:
    model.fit(data)
    error = None
except (ValueError, MemoryError) as refused:
    error = str(refused)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak, "data_mb": before, "error": error,
                  "parts": sorted(getattr(model, "parts", {}))}))
'''


def fit(snapshot: Path, kind: str, timeout: float) -> dict[str, object]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(snapshot), kind], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1]}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def quality_cost(work: Path) -> list[dict[str, object]]:
    """NDCG@10 of the default blend with and without EASE on the generated shop of the
    tests' size (3,000 customers), last 30 days held out."""
    from features.generate import ShopSpec, generate_shop
    from features.snapshot import build_snapshot
    from training.evaluate import evaluate
    from training.models import create
    from training.pipeline import prepare

    generate_shop(ShopSpec(customers=3000, seed=5), work / "quality-shop")
    build_snapshot(work / "quality-shop", work / "quality-snap")
    split = prepare(work / "quality-snap").split
    rows = []
    for label, params in (("blend with EASE", {}),
                          ("blend, item neighbours in EASE's place", {"ease_max_offers": 1})):
        metrics = evaluate(create("blend", params).fit(split.data), split)
        for row in metrics[metrics["group"] == "overall"].to_dict("records"):
            rows.append({"model": label, **row})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", default="5000,20000,50000")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--write-only", action="store_true",
                        help="Write catalogue.md again from catalogue.json, measuring nothing.")
    args = parser.parse_args()
    from features.generate import ShopSpec, generate_shop
    from features.snapshot import build_snapshot
    from training.models.neighbours import ease_limit

    if args.write_only:
        kept = json.loads((RESULTS / "catalogue.json").read_text())
        args.offers = kept.get("offers", args.offers)
        args.timeout = kept.get("timeout", args.timeout)
        args.run_at = kept.get("run_at", "a run that kept no date")
        write(kept["fits"], kept["quality"], ease_limit(), args)
        return
    args.run_at = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for offers in (int(n) for n in args.offers.split(",")):
            shop, snapshot = work / f"shop-{offers}", work / f"snap-{offers}"
            started = time.perf_counter()
            generate_shop(ShopSpec(customers=CUSTOMERS_PER_OFFER * offers, products=offers,
                                   seed=7), shop)
            build_snapshot(shop, snapshot)
            print(f"{offers:,} offers: shop and snapshot in {time.perf_counter() - started:.0f} s",
                  flush=True)
            for kind in MODELS:
                result = fit(snapshot, kind, args.timeout)
                rows.append({"offers": offers, "model": kind, **result})
                print(json.dumps(rows[-1]), flush=True)
        quality = quality_cost(work)
    write(rows, quality, ease_limit(), args)


def write(rows: list[dict[str, object]], quality: list[dict[str, object]], ease_limit: int,
          args: argparse.Namespace) -> None:
    from training.models.neighbours import PEAK_BYTES_PER_PAIR

    box = machine()
    lines = [
        "# Fit time and memory against the catalogue's size",
        "",
        f"{args.run_at}, {box['cpu']}, {box['cores']} cores, "
        f"{box['memory_gb']} GB. Generated shops of {CUSTOMERS_PER_OFFER} customers per "
        "offer; every model at its defaults, each fit in a process of its own "
        f"(`OPENBLAS_NUM_THREADS=1`), stopped after {args.timeout:.0f} s. Peak is the "
        "process's largest resident memory; the data alone (the training matrix and "
        "features, loaded before the fit) is given apart.",
        f"Produced by `uv run python bench/catalogue.py --offers {args.offers}`.",
        "",
        "| offers | model | fit s | peak MB | data MB | note |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        note = str(row.get("error") or "")
        if row["model"] == "blend" and not row.get("error"):
            note = "parts: " + ", ".join(row.get("parts", []))  # type: ignore[arg-type]
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        peak = f"{row['peak_mb']:,.0f}" if "peak_mb" in row else ""
        data = f"{row['data_mb']:,.0f}" if "data_mb" in row else ""
        lines.append(f"| {row['offers']:,} | {row['model']} | {seconds} | {peak} | {data} | "
                     f"{note} |")
    per_pair = [((float(r["peak_mb"]) - float(r["data_mb"])) * 2**20  # type: ignore[arg-type]
                 / int(r["offers"])**2, int(r["offers"]))  # type: ignore[call-overload]
                for r in rows if r["model"] == "ease" and not r.get("error")]
    measured = " and ".join(f"{bytes_:.1f} bytes per pair of offers at {offers:,} offers"
                            for bytes_, offers in per_pair)
    lines += [
        "",
        f"EASE inverts a dense offers x offers matrix. Its fit took {measured} (peak less "
        "data, over offers squared); the blend counts "
        f"{PEAK_BYTES_PER_PAIR}, so within 60% of this machine's memory EASE fits up to about "
        f"{ease_limit:,} offers (and refuses past its `max_items`, 30,000). Past that the "
        "blend (`ease_max_offers`, by default this limit) leaves EASE out and gives its "
        "weight to the item neighbours.",
        "",
        "What leaving EASE out costs on the generated shop (3,000 customers, the last 30 days "
        "held out, NDCG@10 and recall@10):",
        "",
        "| model | task | ndcg | recall |",
        "| --- | --- | ---: | ---: |",
    ]
    for row in quality:
        lines.append(f"| {row['model']} | {row['task']} | {row['ndcg']:.4f} | "
                     f"{row['recall']:.4f} |")
    (RESULTS / "catalogue.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "catalogue.json").write_text(json.dumps(
        {"run_at": args.run_at, "offers": args.offers, "timeout": args.timeout, "fits": rows,
         "quality": quality},
        indent=1, default=str))
    print(f"wrote {RESULTS / 'catalogue.md'}")


if __name__ == "__main__":
    main()
