"""Prometheus counters of what the service served, and the garbage collector's pauses,
appended to BentoML's /metrics."""

from __future__ import annotations

import bisect
import gc
import itertools
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

# a collection stops the event loop: from a fraction of a ms to the 100 ms that queue
# a busy server's requests
PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class CollectionPauses:
    """Every garbage collection timed by a ``gc`` callback into plain lists, exported when
    scraped. No metric objects in the callback: it may run inside any allocation, even one
    made while a metric's lock is held."""

    def __init__(self) -> None:
        self.counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]
        self.seconds = [0.0] * 3
        self.longest = [0.0] * 3
        self._started = 0.0

    def start(self) -> None:
        if self.on_collection not in gc.callbacks:
            gc.callbacks.append(self.on_collection)

    def on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause, generation = time.perf_counter() - self._started, info["generation"]
        self.counts[generation][bisect.bisect_left(PAUSE_BUCKETS, pause)] += 1
        self.seconds[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def collect(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily("nbo_gc_pause_seconds",
                                       "Garbage collections of the worker, by generation.",
                                       labels=["generation"])
        longest = GaugeMetricFamily("nbo_gc_longest_pause_seconds",
                                    "The worker's longest garbage collection since start.",
                                    labels=["generation"])
        for generation in range(3):
            total = list(itertools.accumulate(self.counts[generation]))
            bounds = [*map(str, PAUSE_BUCKETS), "+Inf"]
            pauses.add_metric([str(generation)], list(zip(bounds, total, strict=True)),
                              self.seconds[generation])
            longest.add_metric([str(generation)], self.longest[generation])
        yield pauses
        yield longest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.served = Counter("nbo_served_offers", "Offers served.", ["endpoint"],
                              registry=self.registry)
        self.fallbacks = Counter("nbo_fallbacks", "Lists served by a fallback.", ["fallback"],
                                 registry=self.registry)
        self.filtered = Counter("nbo_filtered_offers",
                                "Offers of the unfiltered top k removed, by the rule that did.",
                                ["rule"], registry=self.registry)
        self.withheld = Counter("nbo_withheld", "Requests answered with no offers, by reason.",
                                ["reason"], registry=self.registry)
        self.feedback = Counter("nbo_feedback_events", "Feedback events stored.", ["action"],
                                registry=self.registry)
        self.events = Counter("nbo_live_events", "Events posted to /events and stored.",
                              registry=self.registry)
        self.triggers = Counter("nbo_trigger_decisions",
                                "Trigger decisions settled by this worker's passes, by status.",
                                ["status"], registry=self.registry)
        self.reloads = Counter("nbo_model_loads", "Model loads, by outcome.", ["outcome"],
                               registry=self.registry)

        self.collections = CollectionPauses()
        self.pauses = CollectorRegistry()  # this worker's own: not kept in shared files
        self.pauses.register(self.collections)

    def text(self) -> str:
        """What /metrics adds to BentoML's own metrics. Under ``bentoml serve`` (prometheus
        multiprocess mode) the counters are kept in the workers' shared files, which
        BentoML's part already sums over every worker: they are added only without it."""
        pauses = generate_latest(self.pauses).decode()
        if values.ValueClass is not values.MutexValue:
            return pauses
        return generate_latest(self.registry).decode() + pauses


METRICS = Metrics()
