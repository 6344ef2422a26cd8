"""The marketer's offer policy (``policy.yaml``): how offers are weighed against each other
after the rules, which are held back, when campaigns run and what fills a short list.

A policy is validated with pydantic; an error names the field and, for a file, its line.
Its version is the file's ``version`` where given, else a digest of its content, and every
answer names the version it was ranked with.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.columns import Stage

Channel = Literal["web", "app", "email", "sms", "push", "post"]
MessagingChannel = Literal["email", "sms", "push", "post"]
Block = Literal["profile", "lifecycle", "last_visit", "regional"]
StageName = Literal["prospect", "new", "active", "at_risk", "lapsed"]
assert set(Stage.all) == set(StageName.__args__)  # type: ignore[attr-defined]
OfferType = Literal["product", "coupon", "service", "content"]
ValueRule = Literal["margin", "price_margin", "price", "none"]


class PolicyError(ValueError):
    """A policy that cannot be used, with every problem found."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Exponents(Strict):
    a: float = Field(1.0, ge=0, le=10, description="Exponent of the propensity.")
    b: float = Field(0.0, ge=0, le=10, description="Exponent of the value.")


class OfferRule(Strict):
    weight: float = Field(1.0, gt=0, description="Multiplies the offer's priority.")
    value: float | None = Field(None, gt=0, description="The offer's value, instead of the "
                                "catalogue's (coupons, services, content).")
    suppressed: bool = Field(False, description="Never served while the policy holds.")
    propensity: float | None = Field(
        None, gt=0, le=1, description="The offer's response probability until the feedback "
        "log gives it a rate of its own (offers nobody bought: coupons, services, content).")


class CategoryRule(Strict):
    weight: float = Field(1.0, gt=0, description="Multiplies the priority of its offers.")
    suppressed: bool = False


class ContextWeight(Strict):
    """Multiplies the priority of the offers it matches, in the requests it matches; every
    field given must match."""

    weight: float = Field(gt=0)
    channel: Channel | None = None
    stage: StageName | None = None
    offer_type: OfferType | None = None
    category: str | None = None

    @model_validator(mode="after")
    def matches_something(self) -> ContextWeight:
        if not any((self.channel, self.stage, self.offer_type, self.category)):
            raise ValueError("a context weight needs at least one of channel, stage, "
                             "offer_type, category")
        return self


class Campaign(Strict):
    """Offers (by id or category) that are served only from ``start`` to ``end`` and weigh
    ``weight`` times more meanwhile."""

    name: str = Field(min_length=1, max_length=64)
    offers: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def sensible(self) -> Campaign:
        if not self.offers and not self.categories:
            raise ValueError(f"campaign {self.name!r} names no offers or categories")
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"campaign {self.name!r} ends before it starts")
        return self


class Budget(Strict):
    """At most ``limit`` impressions or conversions of its offers (by id, or a campaign's)
    per day, ISO week or in total; an offer drops out once any of its budgets is used up."""

    name: str = Field(min_length=1, max_length=64)
    offers: list[str] = Field(default_factory=list)
    campaign: str | None = Field(None, description="The offers of this campaign.")
    limit: int = Field(ge=1)
    counts: Literal["impressions", "conversions"] = "impressions"
    period: Literal["day", "week", "total"] = "total"

    @model_validator(mode="after")
    def names_offers(self) -> Budget:
        if not self.offers and not self.campaign:
            raise ValueError(f"budget {self.name!r} names no offers or campaign")
        return self


class Fallbacks(Strict):
    rank: list[str] = Field(default_factory=list, description="Fill a ranking shorter than k.")
    blocks: dict[Block, list[str]] = Field(default_factory=dict,
                                           description="Fill an empty newsletter block.")


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         "'Europe/London')") from None
    return name


class QuietHours(Strict):
    """No message is handed over from ``start`` to ``end`` in the customer's time zone (a
    window past midnight, such as 21:00 to 08:00, is fine); a decision due meanwhile waits."""

    start: time
    end: time

    @model_validator(mode="after")
    def not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours start and end at the same time")
        return self

    def holds(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


class Contact(Strict):
    """How often and when offers and triggered messages may reach a customer."""

    max_impressions: int | None = Field(None, ge=1, le=1000, description="Impressions "
                                        "without a click after which an offer rests for the "
                                        "customer, instead of NBO_CONTACT_MAX_IMPRESSIONS.")
    impression_window_days: float | None = Field(None, gt=0, le=365, description="Window of "
                                                 "that count, instead of "
                                                 "NBO_CONTACT_WINDOW_DAYS.")
    max_messages: int | None = Field(None, ge=1, description="At most this many triggered "
                                     "messages per customer in `per_days`, all channels.")
    per_days: float = Field(7.0, gt=0, le=365)
    quiet_hours: QuietHours | None = None
    time_zone: str = Field("UTC", description="Time zone of customers whose region has none.")
    region_time_zones: dict[str, str] = Field(default_factory=dict,
                                              description="Time zone per customer region.")

    def zone_of(self, region: str | None) -> str:
        """The time zone of a customer of ``region``."""
        return self.region_time_zones.get(region or "", self.time_zone)

    @model_validator(mode="after")
    def known_zones(self) -> Contact:
        for name in (self.time_zone, *self.region_time_zones.values()):
            _zone(name)
        return self


TriggerKind = Literal["cart_abandoned", "category_views", "first_purchase", "stage", "birthday"]


class Trigger(Strict):
    """A moment to contact a customer, found in live events or in time, and the messaging
    channel and offers of the decision it produces."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    when: TriggerKind = Field(description="cart_abandoned: a customer's cart left without a "
                            "purchase for `after_minutes` after its last addition; "
                            "category_views: `views` views of one "
                            "category within `within_minutes`; first_purchase: a customer's "
                            "first purchase; stage: a customer crossing into `stage`; "
                            "birthday: a customer's birthday began in their time zone "
                            "(`after_minutes` counts from midnight there).")
    channel: MessagingChannel
    after_minutes: float = Field(0.0, ge=0, le=60 * 24 * 90,
                                 description="Delay from the event (or crossing) to the "
                                 "decision; for cart_abandoned, how long the cart is left.")
    expire_minutes: float | None = Field(None, gt=0, description="A decision not handed over "
                                         "this long after it was due (quiet hours) is dropped.")
    views: int = Field(3, ge=2, le=1000)
    within_minutes: float = Field(60.0, gt=0, le=60 * 24 * 30)
    stage: Literal["at_risk", "lapsed"] | None = None
    offers: list[str] = Field(default_factory=list, description="The decision's offers are "
                              "chosen among these; empty: among all, by the engine.")
    k: int = Field(1, ge=1, le=20, description="Offers per decision.")
    once_per_days: float | None = Field(None, gt=0, le=3650, description="At most one "
                                        "occasion of this trigger per customer in this time.")

    @model_validator(mode="after")
    def stage_only_for_stages(self) -> Trigger:
        if (self.when == "stage") != (self.stage is not None):
            raise ValueError(f"trigger {self.name!r}: 'stage' is given exactly for "
                             "triggers on stage")
        return self


class OfferPolicy(Strict):
    version: str | None = Field(None, min_length=1, max_length=64,
                                pattern=r"^[A-Za-z0-9._:-]+$")
    value: ValueRule = Field("margin", description="The catalogue's value of an offer: its "
                             "margin, price * margin, price, or none (1).")
    default_value: float = Field(1.0, gt=0, description="Value of an offer the rule gives "
                                 "none for (a missing margin or price).")
    channels: dict[Channel, Exponents] = Field(default_factory=dict)
    offers: dict[str, OfferRule] = Field(default_factory=dict)
    categories: dict[str, CategoryRule] = Field(default_factory=dict)
    context: list[ContextWeight] = Field(default_factory=list)
    campaigns: list[Campaign] = Field(default_factory=list)
    budgets: list[Budget] = Field(default_factory=list)
    fallbacks: Fallbacks = Fallbacks()
    contact: Contact = Contact()
    triggers: list[Trigger] = Field(default_factory=list)

    @model_validator(mode="after")
    def names_unique_and_known(self) -> OfferPolicy:
        for what, names in (("campaign", [c.name for c in self.campaigns]),
                            ("budget", [b.name for b in self.budgets]),
                            ("trigger", [t.name for t in self.triggers])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what} names used twice: {twice}")
        campaigns = {c.name for c in self.campaigns}
        unknown = sorted({b.campaign for b in self.budgets if b.campaign} - campaigns)
        if unknown:
            raise ValueError(f"budgets name campaigns the policy does not define: {unknown}")
        return self

    def exponents(self, channel: str) -> Exponents:
        return self.channels.get(channel, Exponents())  # type: ignore[call-overload]

    def offer_ids(self) -> set[str]:
        """Every offer id the policy names."""
        named = set(self.offers) | set(self.fallbacks.rank)
        for offers in self.fallbacks.blocks.values():
            named |= set(offers)
        for campaign in self.campaigns:
            named |= set(campaign.offers)
        for budget in self.budgets:
            named |= set(budget.offers)
        for trigger in self.triggers:
            named |= set(trigger.offers)
        return named

    def category_names(self) -> set[str]:
        named = set(self.categories) | {c.category for c in self.context if c.category}
        for campaign in self.campaigns:
            named |= set(campaign.categories)
        return named


DEFAULT = OfferPolicy()


class Versioned(BaseModel):
    """A policy with the version answers name and the text it was read from."""

    model_config = ConfigDict(frozen=True)

    policy: OfferPolicy
    version: str
    text: str


def versioned(policy: OfferPolicy, text: str) -> Versioned:
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Versioned(policy=policy, version=policy.version or f"sha256:{digest}", text=text)


NEUTRAL = versioned(DEFAULT, "{}")  # no policy given: relevance alone, as before policies


def parse(text: str, source: str = "policy") -> Versioned:
    """A policy from YAML (or JSON, which is YAML too); errors name the field and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as bad:
        raise PolicyError(f"{source}: not YAML: {bad}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping of settings, not "
                          f"{type(data).__name__}")
    try:
        policy = OfferPolicy.model_validate(data)
    except ValidationError as bad:
        problems = []
        for problem in bad.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "(top)"
            line = _line_of(node, problem["loc"])
            at = f" (line {line})" if line else ""
            problems.append(f"{source}: {where}{at}: {problem['msg']}")
        raise PolicyError("\n".join(problems)) from None
    return versioned(policy, text)


def load(path: Path) -> Versioned:
    if not path.is_file():
        raise PolicyError(f"{path}: no such policy file")
    return parse(path.read_text(encoding="utf-8"), str(path))


def from_json(body: dict[str, Any]) -> Versioned:
    """A policy sent as JSON (``PUT /admin/policy``); its text is the canonical JSON."""
    return parse(json.dumps(body, sort_keys=True, default=str), "policy")


def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest parent found."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line
