"""What the engine's parts pass each other: a request, its settings, and the answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import numpy as np

from features.settings import Settings
from serving.arbitration import Arbiter
from serving.assignment import NO_CONTROL_GROUP, ControlGroup
from serving.explore import NO_EXPLORATION, Exploration
from serving.live import NOTHING, Activity
from serving.reasons import NO_ANCHORS, Anchors
from serving.scorer import CustomerScores


class RequestError(ValueError):
    """The caller's mistake: answered with 4xx and this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PolicySettings:
    personalization_default: bool = True
    max_impressions: int = 3
    contact_window_days: float = 14.0
    max_per_category: int = 3
    dismiss_rest_days: float = 30.0
    live_events: int = 200  # per customer: the latest ones since the snapshot count
    control: ControlGroup = NO_CONTROL_GROUP
    exploration: Exploration = NO_EXPLORATION

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicySettings:
        return cls(settings.personalization_default == "granted",
                   settings.contact_max_impressions, settings.contact_window_days,
                   settings.max_per_category, settings.dismiss_rest_days,
                   settings.live_events_per_customer,
                   ControlGroup(settings.control_share, settings.control_salt,
                                settings.control_period, settings.control_mail),
                   Exploration(settings.explore_share, settings.explore_min_impressions,
                               settings.explore_window_days, settings.explore_seed,
                               settings.explore_candidates))


@dataclass
class Request:
    customer_id: str
    channel: str = "web"
    k: int = 10
    now: datetime | None = None
    product_id: str | None = None
    cart: list[str] = field(default_factory=list)
    session: list[str] = field(default_factory=list)
    region: str | None = None
    explain: bool = False
    among: tuple[str, ...] = ()  # choose among these offers only (a trigger's); empty: all
    preview: bool = False  # the console's look: nothing taken from budgets, nothing explored


@dataclass
class Offer:
    product_id: str
    title: str
    rank: int
    score: float
    reason: str
    priority: float | None = None  # with explain: the arbitration's priority
    components: dict[str, float] | None = None  # and what it is the product of


@dataclass
class Ranking:
    request_id: str
    model_version: str
    customer_id: str
    lifecycle_stage: str
    fallback: str | None
    offers: list[Offer]
    withheld: str | None = None
    removed: dict[str, int] = field(default_factory=dict)  # per rule, of the unfiltered top k
    removed_offers: list[tuple[str, str]] = field(default_factory=list)  # (product, rule)
    policy_version: str = ""
    priorities: list[float] = field(default_factory=list)  # of the offers, in their order
    arm: str | None = None  # of the universal control group, where there is one
    probabilities: list[float] = field(default_factory=list)  # each offer's, where explored


class Resolved(NamedTuple):
    row: int  # -1 for a customer serving does not know (or erased)
    now_ns: int
    session: np.ndarray  # offer indices of the session
    page: np.ndarray  # the product on the page (none or one)
    cart: np.ndarray


@dataclass
class Prepared:
    """One customer's request resolved against the engine: scores and the policy masks."""

    stage: str
    region: str | None
    scored: CustomerScores
    masks: dict[str, np.ndarray]
    arbiter: Arbiter  # the offer policy the masks came from
    activity: Activity = NOTHING
    anchors: Anchors = NO_ANCHORS

    @property
    def policy_version(self) -> str:
        return self.arbiter.version

    @property
    def scores(self) -> np.ndarray:
        return self.scored.values

    @property
    def fallback(self) -> str | None:
        return self.scored.fallback

    def allowed(self) -> np.ndarray:
        """Offers every rule lets through."""
        return np.logical_and.reduce(list(self.masks.values()))
