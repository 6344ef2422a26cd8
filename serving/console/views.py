"""What the console's pages show, read from the engine, the holder and the store: plain
data for the templates, so each page's content is tested without a browser."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from features.columns import CHANNELS, Stage
from serving.access import ConsentHeld, consents_held
from serving.engine import BLOCKS, Engine, Letter, Ranking, Request
from serving.models import ModelHolder
from serving.newsletter import BLOCK_REASONS
from serving.store import Store

log = logging.getLogger(__name__)
K = 10  # offers per channel on the customer page
RESPONSE_DAYS = 30  # the offers page's response rates
PAGE_SIZE = 50  # offers per page


@dataclass
class ChannelView:
    channel: str
    ranking: Ranking
    titles: dict[str, str]

    @property
    def removed(self) -> list[tuple[str, str, str]]:
        """(product, title, rule) of each offer of the unfiltered top k a rule took."""
        return [(p, self.titles.get(p, ""), rule) for p, rule in self.ranking.removed_offers]


@dataclass
class CustomerView:
    customer_id: str
    now: datetime
    erased: bool = False
    known: bool = False
    stage: str = ""
    arm: str | None = None  # the universal control group's
    experiment: tuple[str, str] | None = None  # (experiment, arm)
    model_version: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    consents: list[ConsentHeld] = field(default_factory=list)
    trail: list[dict[Any, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    channels: list[ChannelView] = field(default_factory=list)
    letter: Letter | None = None
    prices: dict[str, float] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)


LIVE_SHOWN = 50  # the newest events and feedback the page lists


def customer(holder: ModelHolder, store: Store, customer_id: str, now: datetime
             ) -> CustomerView:
    """What the customer would get on each channel and in the newsletter now, and why; a
    preview: nothing is logged, spent from budgets or explored."""
    view = CustomerView(customer_id, now)
    if store.erased_among([customer_id], returned_too=False):
        view.erased = True
        return view
    engine, assigned = holder.route(customer_id, now)
    offers = engine.offers
    titles = dict(zip(offers.ids.tolist(), offers.titles.tolist(), strict=True))
    view.titles = titles
    view.experiment, view.model_version = assigned, engine.version
    row = engine.row_of(customer_id)
    view.known = row >= 0
    now_ns = int(np.datetime64(now, "ns").astype(np.int64))
    view.state = engine.state.described(row, now_ns)
    consent = store.consent(customer_id, engine.settings.personalization_default)
    view.consents = consents_held(store, customer_id, consent)
    view.trail = store.consent_trail(customer_id).to_dict("records")[::-1]
    held = store.held_of(customer_id)
    view.events = held["events"][::-1][:LIVE_SHOWN]
    view.feedback = held["feedback"][::-1][:LIVE_SHOWN]
    for channel in CHANNELS:
        ranking = engine.rank(Request(customer_id, channel, K, now, explain=True,
                                      preview=True), now, consent)
        view.channels.append(ChannelView(channel, ranking, titles))
    view.stage = view.channels[0].ranking.lifecycle_stage
    view.arm = view.channels[0].ranking.arm
    view.letter = engine.newsletter([customer_id], BLOCKS, now, preview=True)[0]
    shown = [block.product_id for block in view.letter.blocks]
    view.prices = {pid: float(price) for pid, price in zip(
        shown, offers.price[engine.items.index_of(shown)], strict=True) if not math.isnan(price)}
    return view


@dataclass
class OfferRow:
    product_id: str
    title: str
    category: str
    price: float | None
    margin: float | None
    in_stock: bool
    valid_now: bool
    channels: list[str]
    region: str
    stages: list[str]
    sensitive: bool
    policy_allows: bool
    budget_left: int | None  # the least left of its budgets; None: no budget
    impressions: int
    clicks: int
    conversions: int
    dismissals: int

    @property
    def click_rate(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    @property
    def eligible(self) -> bool:
        return self.in_stock and self.valid_now and self.policy_allows and \
            (self.budget_left is None or self.budget_left > 0)


@dataclass
class OffersView:
    rows: list[OfferRow]
    total: int
    page: int
    pages: int
    query: str
    since: datetime
    policy_version: str


def offers_page(engine: Engine, store: Store, now: datetime, page: int = 1, query: str = ""
                ) -> OffersView:
    """The catalogue with each offer's eligibility now, budget left and responses of the
    last ``RESPONSE_DAYS`` days; most shown first, ``query`` matching id or title."""
    offers, arbiter = engine.offers, engine.arbiter
    now_ns = int(np.datetime64(now, "ns").astype(np.int64))
    since = now - timedelta(days=RESPONSE_DAYS)
    responses = store.offer_responses(since).reindex(offers.ids, fill_value=0)
    left = np.full(len(offers), -1, dtype=np.int64)  # -1: no budget
    if arbiter.budgets:
        used = store.budget_used(arbiter.budget_keys(now))
        for (_, members), remaining in zip(arbiter.budgets, arbiter.left(used, now),
                                           strict=True):
            left[members] = np.where(left[members] < 0, remaining,
                                     np.minimum(left[members], remaining))
    allowed = arbiter.allowed(now_ns)
    order = np.argsort(-responses["impression"].to_numpy(), kind="stable")
    if query:
        wanted = query.lower()
        order = np.array([i for i in order if wanted in str(offers.ids[i]).lower()
                          or wanted in str(offers.titles[i]).lower()], dtype=np.int64)
    pages = max(1, math.ceil(len(order) / PAGE_SIZE))
    page = min(max(page, 1), pages)
    rows = []
    for i in order[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]:
        counts = responses.iloc[i]
        rows.append(OfferRow(
            str(offers.ids[i]), str(offers.titles[i]),
            str(offers.categories[offers.category[i]]),
            None if math.isnan(offers.price[i]) else float(offers.price[i]),
            None if math.isnan(offers.margin[i]) else float(offers.margin[i]),
            bool(offers.in_stock[i]),
            bool(offers.valid_from[i] <= now_ns <= offers.valid_to[i]),
            [c for n, c in enumerate(CHANNELS) if offers.channels[i] & (1 << n)],
            str(offers.region[i]),
            [s for n, s in enumerate(Stage.all) if offers.stages[i] & (1 << n)],
            bool(offers.sensitive[i]), bool(allowed[i]),
            None if left[i] < 0 else int(left[i]),
            int(counts["impression"]), int(counts["click"]), int(counts["conversion"]),
            int(counts["dismiss"])))
    return OffersView(rows, len(order), page, pages, query, since, arbiter.version)


@dataclass
class ModelsView:
    serving: str | None
    version: str | None
    since: str | None
    experiment: str | None
    refused: dict[str, str]
    passed_over: list[str]
    entries: list[dict[str, Any]]
    policy_version: str


def models_page(holder: ModelHolder) -> ModelsView:
    """Every entry of the model in BentoML's store, newest first, with which one serves and
    which were refused and why."""
    status = holder.status
    name = holder.tag.split(":")[0]
    entries = []
    for entry in sorted(bentoml.models.list(name), key=lambda m: m.creation_time,
                        reverse=True):
        tag = str(entry.tag)
        entries.append({"tag": tag, "version": entry.info.labels.get("mlflow_version", ""),
                        "created": entry.creation_time.strftime("%Y-%m-%d %H:%M"),
                        "kind": saved_kind(Path(entry.path)),
                        "serving": tag == status.serving, "refused": status.refused.get(tag)})
    return ModelsView(status.serving, status.version, status.since, status.experiment,
                      dict(status.refused), list(status.passed_over), entries,
                      holder.policy.version)


def saved_kind(folder: Path) -> str:
    """The kind of model a saved folder holds ("?" where its description is unreadable)."""
    try:
        return str(json.loads((folder / "model.json").read_text())["kind"])
    except (OSError, ValueError, KeyError) as unreadable:
        log.warning("model entry %s: %s", folder.name, unreadable)
        return "?"


@dataclass
class Interval:
    """One lift's bar on the experiment chart, in the chart's own coordinates."""

    label: str
    low: float
    high: float
    mid: float
    x_low: float
    x_high: float
    x_mid: float
    y: float
    excludes_zero: bool


CHART_WIDTH, CHART_LEFT, CHART_RIGHT, ROW_HEIGHT = 760.0, 170.0, 70.0, 28.0


def lift_chart(lifts: list[dict[str, Any]]) -> tuple[list[Interval], float, float]:
    """The relative lifts with their intervals, placed on a shared axis that shows zero: the
    bars, the x of zero and the chart's height."""
    shown = [lift for lift in lifts if all(
        isinstance(lift.get(k), float) and math.isfinite(lift[k])
        for k in ("relative", "relative_low", "relative_high"))]
    if not shown:
        return [], CHART_LEFT, ROW_HEIGHT
    lowest = min(0.0, *(lift["relative_low"] for lift in shown))
    highest = max(0.0, *(lift["relative_high"] for lift in shown))
    span = (highest - lowest) or 1.0
    width = CHART_WIDTH - CHART_LEFT - CHART_RIGHT  # the right margin: the labels

    def x(value: float) -> float:
        return round(CHART_LEFT + (value - lowest) / span * width, 1)

    bars = [Interval(f"{lift['arm']}: {lift['metric'].removesuffix('_per_customer')}",
                     lift["relative_low"], lift["relative_high"], lift["relative"],
                     x(lift["relative_low"]), x(lift["relative_high"]), x(lift["relative"]),
                     ROW_HEIGHT * (n + 0.5),
                     lift["relative_low"] > 0 or lift["relative_high"] < 0)
            for n, lift in enumerate(shown)]
    return bars, x(0.0), ROW_HEIGHT * len(bars)


def block_title(block: str) -> str:
    """A newsletter block's heading, as the mail shows it."""
    return {"profile": "Picked for you", "lifecycle": "Just for you right now",
            "last_visit": "Still thinking about it?", "regional": "Popular near you"
            }.get(block, BLOCK_REASONS.get(block, block))

