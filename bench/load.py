"""Open-loop load generator: sends requests at a fixed rate whatever the answers, in its own
process, and measures each latency from the moment the request was due (so a stalled server
shows up as latency instead of as a slower request rate).

    python bench/load.py URL KEY --rate 200 --seconds 20 --customers ids.txt
prints one JSON line with the latency percentiles and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import httpx
import numpy as np


async def run(url: str, key: str, rate: float, seconds: float, customers: list[str],
              k: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=10.0) as client:
        await client.post("/rank", json={"customer_id": customers[0], "k": k})  # warm up

        async def one(due: float, customer: str) -> None:
            nonlocal errors
            try:
                response = await client.post("/rank", json={"customer_id": customer, "k": k})
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - due)

        tasks = []
        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, rng.choice(customers))))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"rate": rate, "requests": total, "achieved_rps": total / elapsed, "errors": errors,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--customers", type=Path, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    customers = args.customers.read_text().split()
    result = asyncio.run(run(args.url, args.key, args.rate, args.seconds, customers, args.k,
                             args.seed))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
