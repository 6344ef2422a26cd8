"""Reason texts: what a marketer may show beside an offer. Sensitive offers are never named,
and the product a reason leans on is named with what the customer did with it: bought, put in
the cart or on the wish list, looked at; never "bought" for what they only looked at."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.columns import Stage
from serving.live import EMPTY
from serving.policy import Offers
from serving.scorer import CustomerScores
from training.models.base import Reason, Recommender

FALLBACK_TEXTS = {"popular_in_region": "popular in your region",
                  "profile": "popular with customers like you",
                  "non_personalised": "popular right now"}
FEATURED = "featured offer"  # a fallback offer of the policy, filling a short list
EXPLORED = "something new to discover"  # chosen by exploration, not for what we know of you


@dataclass(frozen=True)
class Anchors:
    """What the customer did with the offers a reason may lean on (offer indices)."""

    bought: np.ndarray
    carted: np.ndarray
    wished: np.ndarray
    seen: np.ndarray

    def verb(self, item: int) -> str:
        """The most telling thing they did with ``item``; for a product that only the
        trained history holds (a wish or a view before the snapshot), a neutral word."""
        for name, verb in VERBS:
            if item in getattr(self, name).tolist():  # a few offers: faster than numpy's in
                return verb
        return "showed interest in"


NO_ANCHORS = Anchors(EMPTY, EMPTY, EMPTY, EMPTY)
VERBS = (("bought", "bought"), ("carted", "put in your cart"),
         ("wished", "put on your wish list"), ("seen", "looked at"))


class Reasons:
    def __init__(self, model: Recommender, offers: Offers) -> None:
        self.model, self.offers = model, offers

    def of(self, customer_id: str, scored: CustomerScores, stage: str, picked: np.ndarray,
           anchors: Anchors) -> list[str]:
        """A reason per picked offer: the model's where it ranked, else its fallback's."""
        if not len(picked):
            return []
        model_reasons = [Reason("popular")] * len(picked)
        if scored.fallback is None:
            model_reasons = self.model.explain(customer_id, list(self.model.items.names[picked]),
                                               history=scored.history)
        return [self.text(item, reason, scored, stage, anchors)
                for item, reason in zip(picked, model_reasons, strict=True)]

    def text(self, item: int, reason: Reason, scored: CustomerScores, stage: str,
             anchors: Anchors) -> str:
        if self.offers.stage_targeted[item]:
            if stage in (Stage.prospect, Stage.new):
                return "welcome offer"
            if stage in (Stage.at_risk, Stage.lapsed):
                return "welcome back offer"
            return "an offer for our regular customers"
        if reason.code == "because_you_bought" and reason.anchor is not None:
            anchor = self.model.items.row(reason.anchor)
            if anchor >= 0 and not self.offers.sensitive[anchor]:  # never named in a reason
                return f"because you {anchors.verb(anchor)} {self.offers.titles[anchor]}"
            return "picked for you"
        if reason.code == "similar_customers":
            return "popular with customers like you"
        return FALLBACK_TEXTS.get(scored.fallback or "", "popular right now")

    def similar_to(self, anchor: int) -> str:
        return ("similar offer" if self.offers.sensitive[anchor]
                else f"similar to {self.offers.titles[anchor]}")
