"""Open-loop load generator: sends requests at a fixed rate whatever the answers, in its own
process, and measures each latency from the moment the request was due (so a stalled server
shows up as latency instead of as a slower request rate).

    python bench/load.py URL KEY --rate 200 --seconds 20 --customers ids.txt \
        [--event-share 0.1 --products products.txt]
prints one JSON line with the latency percentiles and errors, and the generator's own CPU
time. With ``--event-share`` that share of the requests post ``--events-per-call`` views of
random products by random customers to /events instead of asking /rank (each with a new event
id); their latencies are also given on their own.

The client is aiohttp: httpx's client spent about 3 ms of CPU a request here, so at 300 req/s
the generator, not the service, was saturated (its answers waited while the service's workers
were idle) and the measured "collapse" was its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np


async def run(url: str, key: str, rate: float, seconds: float, customers: list[str],
              k: int, seed: int, event_share: float = 0.0, products: list[str] | None = None,
              per_call: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    posted: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector,
                                     timeout=timeout) as client:
        async with client.post("/rank", json={"customer_id": customers[0], "k": k}) as answer:
            await answer.read()  # warm up

        async def one(due: float, customer: str, product: str | None) -> None:
            nonlocal errors
            try:
                if product is None:
                    call = client.post("/rank", json={"customer_id": customer, "k": k})
                else:
                    call = client.post("/events", json={"events": [
                        {"event_id": uuid.uuid4().hex, "customer_id": rng.choice(customers),
                         "product_id": rng.choice(products or [product]),
                         "event_type": "view"} for _ in range(per_call)]})
                async with call as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            (latencies if product is None else posted).append(time.perf_counter() - due)

        tasks = []
        cpu = time.process_time()
        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            product = rng.choice(products) if products and rng.random() < event_share \
                else None
            tasks.append(asyncio.create_task(one(due, rng.choice(customers), product)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    ms = np.asarray(latencies + posted) * 1000
    result = {"rate": rate, "requests": total, "achieved_rps": total / elapsed,
              "errors": errors, "p50_ms": float(np.percentile(ms, 50)),
              "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
              "max_ms": float(ms.max()), "events_posted": len(posted),
              "generator_cpu_share": cpu / elapsed}
    if posted:
        events_ms = np.asarray(posted) * 1000
        result |= {"events_p50_ms": float(np.percentile(events_ms, 50)),
                   "events_p99_ms": float(np.percentile(events_ms, 99))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--customers", type=Path, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--event-share", type=float, default=0.0)
    parser.add_argument("--products", type=Path, default=None)
    parser.add_argument("--events-per-call", type=int, default=1)
    args = parser.parse_args()
    customers = args.customers.read_text().split()
    products = args.products.read_text().split() if args.products else None
    result = asyncio.run(run(args.url, args.key, args.rate, args.seconds, customers, args.k,
                             args.seed, args.event_share, products, args.events_per_call))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
