"""Prometheus counters of what the service served, appended to BentoML's /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest


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
        self.reloads = Counter("nbo_model_loads", "Model loads, by outcome.", ["outcome"],
                               registry=self.registry)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


METRICS = Metrics()
