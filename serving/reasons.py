"""Reason texts: what a marketer may show beside an offer. Sensitive offers are never named,
and an offer the customer only looked at is never said to have been bought."""

from __future__ import annotations

import numpy as np

from features.columns import Stage
from serving.policy import Offers
from serving.scorer import CustomerScores
from training.models.base import Reason, Recommender

FALLBACK_TEXTS = {"popular_in_region": "popular in your region",
                  "profile": "popular with customers like you",
                  "non_personalised": "popular right now"}


class Reasons:
    def __init__(self, model: Recommender, offers: Offers) -> None:
        self.model, self.offers = model, offers

    def of(self, customer_id: str, scored: CustomerScores, stage: str, picked: np.ndarray
           ) -> list[str]:
        """A reason per picked offer: the model's where it ranked, else its fallback's."""
        if not len(picked):
            return []
        model_reasons = [Reason("popular")] * len(picked)
        if scored.fallback is None:
            model_reasons = self.model.explain(customer_id, list(self.model.items.names[picked]),
                                               history=scored.history)
        return [self.text(item, reason, scored, stage)
                for item, reason in zip(picked, model_reasons, strict=True)]

    def text(self, item: int, reason: Reason, scored: CustomerScores, stage: str) -> str:
        if self.offers.stage_targeted[item]:
            if stage in (Stage.prospect, Stage.new):
                return "welcome offer"
            if stage in (Stage.at_risk, Stage.lapsed):
                return "welcome back offer"
            return "an offer for our regular customers"
        if reason.code == "because_you_bought" and reason.anchor is not None:
            anchor = self.model.items.row(reason.anchor)
            if anchor >= 0 and not self.offers.sensitive[anchor]:  # never named in a reason
                verb = "looked at" if scored.session_based else "bought"
                return f"because you {verb} {self.offers.titles[anchor]}"
            return "picked for you"
        if reason.code == "similar_customers":
            return "popular with customers like you"
        return FALLBACK_TEXTS.get(scored.fallback or "", "popular right now")

    def similar_to(self, anchor: int) -> str:
        return ("similar offer" if self.offers.sensitive[anchor]
                else f"similar to {self.offers.titles[anchor]}")
