"""Every request-time rule's mask for one customer, in DESIGN.md's order: eligibility,
consent, lifecycle, exclusion, contact. Each mask is one function of :mod:`serving.policy`
over the state serving holds."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from features.ids import IdMap
from serving import policy
from serving.policy import Consent, Offers
from serving.requests import PolicySettings
from serving.state import CustomerState
from serving.store import Exposure, Store


class Masks:
    def __init__(self, offers: Offers, items: IdMap, state: CustomerState, store: Store,
                 settings: PolicySettings) -> None:
        self.offers, self.items, self.state = offers, items, state
        self.store, self.settings = store, settings

    def of(self, customer_id: str, row: int, channel: str, now: datetime, now_ns: int,
           region: str | None, stage: str, consent: Consent, cart: np.ndarray,
           exposure: Exposure | None) -> dict[str, np.ndarray]:
        """Rule name -> offers it lets through; ``exposure`` None reads the feedback log."""
        return {
            "eligibility": policy.eligible(self.offers, now_ns, channel, region,
                                           self.state.age(row, now)),
            "consent": policy.consented(self.offers, consent),
            "lifecycle": policy.in_stage(self.offers, stage),
            "exclusion": self.exclusions(row, now_ns, cart),
            "contact": self.contact(customer_id, now, exposure),
        }

    def exclusions(self, row: int, now_ns: int, cart: np.ndarray) -> np.ndarray:
        bought, days_ago = self.state.purchases(row, now_ns)
        return policy.not_excluded(self.offers, bought, days_ago, self.state.returns(row), cart)

    def contact(self, customer_id: str, now: datetime, exposure: Exposure | None
                ) -> np.ndarray:
        if exposure is None:
            since = now - timedelta(days=self.settings.contact_window_days)
            exposure = self.store.exposure(customer_id, since)
        shown = np.fromiter((self.items.row(p) for p in exposure.product_ids), dtype=np.int64,
                            count=len(exposure.product_ids))
        known = shown >= 0
        return policy.not_rested(len(self.offers), shown[known], exposure.shown[known],
                                 exposure.clicked[known], self.settings.max_impressions)
