"""The universal control group: a share of customers who get the non-personalised baseline on
the storefront and no personalised messages, so that what personalisation changes can be
measured against them.

Membership is a hash of a salt, the period and the customer's id: the same in every worker,
replica and restart, and drawn anew each period (``NBO_CONTROL_PERIOD``). Consent and every
rule still come first: a customer without e-mail consent gets no mail in either arm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Period = Literal["month", "quarter", "year", "never"]
CONTROL_GROUP = "universal-control"  # the experiment name in the decision log
CONTROL, PERSONALISED = "control", "personalised"


@dataclass(frozen=True)
class ControlGroup:
    share: float = 0.0  # 0: no control group, every customer is personalised
    salt: str = "nbo-control"
    period: Period = "quarter"
    mail: Literal["holdout", "baseline"] = "holdout"  # no messages, or non-personalised ones

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 0.5:
            raise ValueError(f"the control group's share is 0 to 0.5, not {self.share}")

    def period_of(self, now: datetime) -> str:
        """The label of the period ``now`` falls in."""
        if self.period == "month":
            return f"{now.year}-{now.month:02d}"
        if self.period == "quarter":
            return f"{now.year}-Q{(now.month - 1) // 3 + 1}"
        return str(now.year) if self.period == "year" else "always"

    def arm(self, customer_id: str, now: datetime) -> str | None:
        """``CONTROL`` or ``PERSONALISED`` for the customer in ``now``'s period; None where
        there is no control group."""
        if self.share <= 0:
            return None
        key = f"{self.salt}|{self.period_of(now)}|{customer_id}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        return CONTROL if draw < self.share else PERSONALISED


NO_CONTROL_GROUP = ControlGroup()
