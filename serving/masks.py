"""Every request-time rule's mask for one customer, in DESIGN.md's order: eligibility,
consent, lifecycle, exclusion, contact, then the offer policy's suppressions and campaign
windows. Each mask is one function of :mod:`serving.policy` over the state serving holds."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from features.ids import IdMap
from serving import policy
from serving.live import NOTHING, Activity
from serving.policy import Consent, Offers
from serving.requests import PolicySettings
from serving.state import NS_PER_DAY, CustomerState
from serving.store import Exposure
from training.models.base import csr_rows


class Masks:
    def __init__(self, offers: Offers, items: IdMap, state: CustomerState,
                 settings: PolicySettings) -> None:
        self.offers, self.items, self.state, self.settings = offers, items, state, settings

    def of(self, row: int, channel: str, now: datetime, now_ns: int, region: str | None,
           stage: str, consent: Consent, cart: np.ndarray, exposure: Exposure, act: Activity,
           offer_policy: np.ndarray) -> dict[str, np.ndarray]:
        """Rule name -> offers it lets through (``offer_policy``: what the offer policy lets
        through now)."""
        return {
            "eligibility": policy.eligible(self.offers, now_ns, channel, region,
                                           self.state.age(row, now)),
            "consent": policy.consented(self.offers, consent),
            "lifecycle": policy.in_stage(self.offers, stage),
            "exclusion": self.exclusions(row, now_ns, cart, act),
            "contact": self.contact(exposure, act),
            "policy": offer_policy,
        }

    def allowed_rows(self, rows: np.ndarray, channel: str, now: datetime, now_ns: int,
                     regions: list[str | None], stages: np.ndarray, consents: list[Consent],
                     exposures: list[Exposure], offer_policy: np.ndarray) -> np.ndarray:
        """What every rule of :meth:`of` lets through, for many known customers with no
        activity since the snapshot and no request context: a row per customer. The rules
        that depend on a customer's profile alone are computed once per distinct profile."""
        allowed = np.empty((len(rows), len(self.offers)), dtype=bool)
        ages = np.unique(self.offers.min_age)  # an age matters only by the limits it reaches
        by_profile: dict[tuple[str | None, int | None, bool, str], np.ndarray] = {}
        for i, row in enumerate(rows.tolist()):
            age = self.state.age(row, now)
            profile = (regions[i], None if age is None else int(np.searchsorted(
                ages, age, side="right")), consents[i].sensitive, str(stages[i]))
            mask = by_profile.get(profile)
            if mask is None:
                mask = by_profile[profile] = (
                    policy.eligible(self.offers, now_ns, channel, regions[i], age)
                    & policy.consented(self.offers, consents[i])
                    & policy.in_stage(self.offers, profile[3]) & offer_policy)
            allowed[i] = mask
        allowed &= policy.not_excluded_rows(self.offers, csr_rows(self.state.bought, rows),
                                            csr_rows(self.state.returned, rows),
                                            now_ns / NS_PER_DAY)
        for i, exposure in enumerate(exposures):
            if exposure.product_ids:
                allowed[i] &= self.contact(exposure, NOTHING)
        return allowed

    def exclusions(self, row: int, now_ns: int, cart: np.ndarray, act: Activity) -> np.ndarray:
        """What the customer bought (also since the snapshot) within its repurchase time,
        returned, has in the cart or is looking at on the page."""
        bought, days_ago = self.state.purchases(row, now_ns)
        if len(act.bought):
            bought = np.concatenate([bought, act.bought])
            days_ago = np.concatenate([days_ago, (now_ns - act.bought_ns) / NS_PER_DAY])
        returned = self.state.returns(row)
        if len(act.returned):
            returned = np.concatenate([returned, act.returned])
        if len(act.page):
            cart = np.concatenate([cart, act.page])
        return policy.not_excluded(self.offers, bought, days_ago, returned, cart)

    def contact(self, exposure: Exposure, act: Activity) -> np.ndarray:
        """Offers shown too often without a click, or dismissed, rest."""
        shown = np.fromiter((self.items.row(p) for p in exposure.product_ids), dtype=np.int64,
                            count=len(exposure.product_ids))
        known = shown >= 0
        keep = policy.not_rested(len(self.offers), shown[known], exposure.shown[known],
                                 exposure.clicked[known], self.settings.max_impressions)
        keep[act.dismissed] = False
        return keep
