"""The ranking engine: one loaded model with its serving context, turning a request into a
policed, explained list of offers. A thin facade over its parts: customer state
(:mod:`serving.state`), scorer (:mod:`serving.scorer`), the rules' masks
(:mod:`serving.masks`), the ranker (:mod:`serving.ranker`), reasons (:mod:`serving.reasons`),
the newsletter (:mod:`serving.newsletter`) and similar offers (:mod:`serving.similar`).
An engine is immutable once built except for erasure, so a new model is served by building a
new engine and swapping the reference.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from features.columns import CHANNELS
from features.config import EventWeights, LifecycleConfig
from features.context import read_context
from features.ids import MISSING, IdMap
from serving import ranker
from serving.arbitration import Arbiter, Priorities, neutral
from serving.assignment import CONTROL
from serving.explore import Explored, PosteriorCache, explore
from serving.live import Activity, activity
from serving.masks import Masks
from serving.newsletter import BLOCKS, Letter, LetterBlock, Newsletter
from serving.offer_policy import Versioned
from serving.policy import Consent, Offers
from serving.reasons import EXPLORED, FEATURED, Anchors, Reasons
from serving.requests import (
    Offer,
    PolicySettings,
    Prepared,
    Ranking,
    Request,
    RequestError,
    Resolved,
)
from serving.scorer import Batch, Scorer
from serving.similar import similar
from serving.state import CustomerState, moment_ns
from serving.store import NO_EXPOSURE, Exposure, LiveEvent, Store, Window
from training.calibration import Calibration
from training.models.base import Query, Recommender

CONTEXT_DIR = "context"
SPEND_ATTEMPTS = 3  # picks of a list whose offers' budgets other requests used up meanwhile
BudgetsUsed = dict[tuple[str, str], int]
BUDGET_READ_SECONDS = 1.0  # how stale a worker's view of the budgets may be (never overspent)
__all__ = ["BLOCKS", "Engine", "Letter", "LetterBlock", "Offer", "PolicySettings", "Ranking",
           "Request", "RequestError"]


class Engine:
    """A model, its offer table and the customer state serving reads, as arrays."""

    def __init__(self, model: Recommender, version: str, tables: dict[str, pd.DataFrame],
                 lifecycle: LifecycleConfig, store: Store, settings: PolicySettings,
                 as_of: datetime = datetime.min, weights: EventWeights | None = None,
                 calibration: Calibration | None = None) -> None:
        """``as_of``: the snapshot's moment (events posted for later moments are live);
        ``weights``: the features' event weights, which live events are weighed with;
        ``calibration``: the model's propensity calibration (None: every offer's
        propensity is 1, so the policy's weights and values alone reorder)."""
        self.model, self.version, self.store, self.settings = model, version, store, settings
        self.base_settings = settings  # the service's; the offer policy may override contact
        self.as_of, self.weights = as_of, weights or EventWeights()
        self.items = model.items
        self.product_ids = frozenset(model.items.names)  # for checking posted events
        self.offers = Offers.from_frame(tables["offers"], model.items.ids)
        self.state = CustomerState(model, model.items, tables, lifecycle)
        self.scorer = Scorer(model, self.state)
        self.masks = Masks(self.offers, model.items, self.state, settings)
        self.reasons = Reasons(model, self.offers)
        self.calibration = calibration
        self.arbiter = neutral(self.offers, calibration)
        self._newsletter = Newsletter(self)
        # exploration's draws: one generator per engine (its bit generator locks, so
        # requests in several threads may share it)
        self.rng = np.random.default_rng(settings.exploration.seed)
        self.posteriors = PosteriorCache(
            lambda since: store.response_counts(since, self.offers.ids), settings.exploration)
        self._budgets: tuple[list[tuple[str, str]], float, BudgetsUsed] | None = None
        self.checked_seconds = 0.0  # how long the health check of every customer took
        self.spends = True  # False: an engine for estimates, which takes nothing from budgets

    @classmethod
    def load(cls, folder: Path, version: str, store: Store, settings: PolicySettings) -> Engine:
        """Load a model folder with its serving context and check they fit together."""
        model = Recommender.load(folder)
        tables, config, as_of = read_context(folder / CONTEXT_DIR)
        consents = tables["consents"]
        store.seed_consents(consents, f"{len(consents)}:"
                            f"{int(pd.util.hash_pandas_object(consents, index=False).sum())}")
        engine = cls(model, version, tables, config.lifecycle, store, settings,
                     as_of.to_pydatetime(), config.weights,
                     Calibration.read(folder / CONTEXT_DIR))
        engine.forget_erased()
        engine.checked_seconds = engine.check()
        return engine

    def check(self, batch: int = 1024) -> float:
        """Refuse a model that cannot serve: every customer it knows, in batches of
        ``batch``, and an unknown one must get a finite score for every offer, and its
        fallbacks (popularity, overall and per region) must be finite. Returns the seconds
        the check took."""
        started = time.perf_counter()
        probes = [*self.model.customers.names, "\0probe"]  # the last is nobody: a cold answer
        for first in range(0, len(probes), batch):
            probe = probes[first:first + batch]
            scores = self.model.answer(Query(probe)).scores
            if scores.shape != (len(probe), len(self.offers)):
                raise ValueError(f"model version {self.version} gives scores of shape "
                                 f"{scores.shape} for {len(probe)} customers and "
                                 f"{len(self.offers)} offers")
            bad = ~np.isfinite(scores).all(axis=1)
            if bad.any():
                raise ValueError(f"model version {self.version} gives non-finite scores to "
                                 f"{int(bad.sum())} customers of rows {first} to "
                                 f"{first + len(probe) - 1}, first {probe[int(bad.argmax())]!r}")
        for name, values in (("popularity", self.model.popularity),
                             ("regional popularity", self.state.popular_in_region.table)):
            if not np.isfinite(values).all():
                raise ValueError(f"model version {self.version} has non-finite {name}")
        return time.perf_counter() - started

    def use_policy(self, versioned: Versioned) -> Arbiter:
        """Rank with this offer policy from the next request on; a policy that names offers
        or categories the catalogue lacks is refused (:class:`PolicyError`) and the one in
        use stays."""
        arbiter = Arbiter(versioned, self.offers, self.calibration)
        self.store.give_back()  # impressions held for the old limits
        self.budgets_changed()
        contact, base = versioned.policy.contact, self.base_settings
        self.settings = self.masks.settings = replace(
            base, max_impressions=contact.max_impressions or base.max_impressions,
            contact_window_days=contact.impression_window_days or base.contact_window_days)
        self.arbiter = arbiter
        return arbiter

    # --- customers ----------------------------------------------------------------------

    @property
    def customers(self) -> IdMap:
        """The model's customer map, which the customer state reads too."""
        return self.model.customers

    def row_of(self, customer_id: str, not_erased: bool = False) -> int:
        """The customer's row, ``MISSING`` for one the model does not know or one erased in
        any worker or replica (the store says; the engine then forgets them too).
        ``not_erased``: the caller asked the store already (the newsletter, for many)."""
        row = self.state.row_of(customer_id)
        if row >= 0 and not not_erased and self.store.is_erased(customer_id):
            self.forget(customer_id)
            return MISSING
        return row

    def forget_erased(self) -> None:
        """Drop customers erased through the API, also from a model trained before."""
        tokens = self.store.erased_tokens()
        if tokens:
            ids = self.model.customers.names
            for customer_id in ids[np.isin(self.store.tokens(ids), list(tokens))]:
                self.forget(str(customer_id))

    def forget(self, customer_id: str) -> dict[str, int]:
        """Erase what the engine holds for one customer; counts of what was removed. The
        state's row is cleared first: the model's forgetting removes the id from the map
        both read."""
        state_rows = self.state.forget(customer_id)
        return {"model_rows": self.model.forget([customer_id]), "state_rows": state_rows}

    # --- requests -----------------------------------------------------------------------

    def indices(self, product_ids: list[str], what: str) -> np.ndarray:
        found = self.items.index_of(product_ids) if product_ids else np.zeros(0, np.int64)
        unknown = [pid for pid, i in zip(product_ids, found, strict=True) if i < 0]
        if unknown:
            raise RequestError(f"unknown product id(s) in {what}: {unknown[:5]}")
        return found

    def resolve(self, request: Request, now: datetime, not_erased: bool = False) -> Resolved:
        """Check the request's channel and offers, and find the customer."""
        if request.channel not in CHANNELS:
            raise RequestError(f"unknown channel {request.channel!r}; known: {list(CHANNELS)}")
        now_ns = moment_ns(now)
        session = self.indices(request.session, "session")
        page = self.indices([request.product_id] if request.product_id else [], "product_id")
        cart = self.indices(request.cart, "cart")
        return Resolved(self.row_of(request.customer_id, not_erased), now_ns, session, page,
                        cart)

    def window(self, now: datetime) -> Window:
        settings = self.settings
        return Window(now - timedelta(days=settings.contact_window_days),
                      now - timedelta(days=settings.dismiss_rest_days), self.as_of, now)

    def activity(self, customer_id: str, resolved: Resolved, now: datetime, exposure: Exposure,
                 events: list[LiveEvent] | None = None) -> Activity:
        """What the customer did since the snapshot (``events`` None: read from the store)
        with the request's session, page and cart."""
        if events is None:
            events = self.store.live_events([customer_id], self.as_of, now,
                                            self.settings.live_events).get(customer_id, [])
        return activity(events, exposure, self.items, resolved.now_ns, self.weights,
                        resolved.session, resolved.cart, resolved.page)

    def staged(self, request: Request, now: datetime, exposure: Exposure,
               events: list[LiveEvent] | None = None, not_erased: bool = False
               ) -> tuple[Resolved, Activity, str]:
        """The request resolved, the customer's activity and their lifecycle stage."""
        resolved = self.resolve(request, now, not_erased)
        act = self.activity(request.customer_id, resolved, now, exposure, events)
        return resolved, act, self.state.stage(resolved.row, resolved.now_ns,
                                               act.first_and_last_purchase())

    def prepare(self, request: Request, now: datetime, consent: Consent,
                batch: Batch | None = None, exposure: Exposure | None = None,
                events: list[LiveEvent] | None = None, not_erased: bool = False,
                arbiter: Arbiter | None = None, used: BudgetsUsed | None = None
                ) -> Prepared:
        """Scores and every rule's mask for one customer (``batch`` where batch-scored;
        ``exposure``, ``events``, ``not_erased``, and the offer policy with what its budgets
        used, where read for many customers at once)."""
        if exposure is None:
            exposure = self.store.exposure(request.customer_id, self.window(now))
        resolved, act, stage = self.staged(request, now, exposure, events, not_erased)
        row, now_ns = resolved.row, resolved.now_ns
        region = request.region or self.state.region_of(row)
        history = self.scorer.history(row, act) if consent.personalization else None
        scored = self.scorer.score(request.customer_id, row, region, stage, now, consent,
                                   history, batch)
        arbiter = arbiter or self.arbiter  # one policy for the answer, even if replaced
        masks = self.masks.of(row, request.channel, now, now_ns, region, stage, consent,
                              resolved.cart, exposure, act,
                              self.policy_mask(arbiter, now, now_ns, used))
        anchors = Anchors(_joined(self.state.purchases(row, now_ns)[0], act.bought),
                          act.carted, act.wished, _joined(act.seen, self.state.visited(row)))
        return Prepared(stage, region, scored, masks, arbiter, act, anchors)

    def policy_mask(self, arbiter: Arbiter, now: datetime, now_ns: int,
                    used: BudgetsUsed | None = None) -> np.ndarray:
        """What the offer policy lets through now: not suppressed, in a running campaign
        where the offer has campaigns, and within its budgets (read from the store, unless
        ``used`` was read already)."""
        allowed = arbiter.allowed(now_ns)
        if arbiter.budgets:
            allowed &= arbiter.within_budgets(used if used is not None else
                                              self.budgets_used(arbiter, now), now)
        return allowed

    def budgets_used(self, arbiter: Arbiter, now: datetime) -> BudgetsUsed:
        """What the budgets used, read from the store at most every ``BUDGET_READ_SECONDS``
        per worker. A stale read never overspends: the store's count moves only under its
        limit (:meth:`spend`), and a refusal reads anew."""
        keys = arbiter.budget_keys(now)
        cached = self._budgets
        if cached is not None and cached[0] == keys and time.monotonic() < cached[1]:
            return cached[2]
        used = self.store.budget_used(keys, own_reserve_free=True)
        self._budgets = (keys, time.monotonic() + BUDGET_READ_SECONDS, used)
        return used

    def budgets_changed(self) -> None:
        """This worker counted in a budget (a conversion) or gave back its reserve: read the
        store on the next request."""
        self._budgets = None

    def spend(self, arbiter: Arbiter, items: np.ndarray, now: datetime) -> np.ndarray:
        """Take an impression from the budgets of the offers about to be served; those
        whose budget another request used up meanwhile are returned (not to be served)."""
        if not self.spends or not arbiter.offer_budgets or not len(items):
            return items[:0]
        taken = np.asarray(self.store.spend(arbiter.spending(items, now)), dtype=bool)
        if not taken.all():
            self._budgets = None  # one ran out: the next request reads the store again
        return items[~taken]

    def rank(self, request: Request, now: datetime, consent: Consent,
             exposure: Exposure | None = None) -> Ranking:
        """The policed top ``request.k`` for one customer, with reasons."""
        if not 1 <= request.k <= 100:
            raise RequestError(f"k must be between 1 and 100, got {request.k}")
        request_id = uuid.uuid4().hex
        arm = self.settings.control.arm(request.customer_id, now)
        if arm == CONTROL:  # the baseline, through every rule
            consent = replace(consent, personalization=False)
        if not consent.allows_channel(request.channel):
            why = ("no e-mail consent with double opt-in" if request.channel == "email"
                   else f"no {request.channel} consent")
            # nothing is offered: the stage from the events alone, no feedback log read
            _, _, stage = self.staged(request, now, NO_EXPOSURE)
            return Ranking(request_id, self.version, request.customer_id, stage, None, [],
                           withheld=why, arm=arm)
        prepared = self.prepare(request, now, consent, exposure=exposure)
        arbiter = prepared.arbiter
        allowed = prepared.allowed()
        if request.among:
            among = np.zeros(len(self.offers), dtype=bool)
            among[self.indices(list(request.among), "among")] = True
            allowed &= among
        now_ns = moment_ns(now)
        weighed = arbiter.priorities(prepared.scores, allowed, request.channel, prepared.stage,
                                     now_ns)
        spent = np.zeros(0, np.int64)
        exploring = (self.settings.exploration.share > 0 and arm != CONTROL
                     and not request.preview)
        for _ in range(SPEND_ATTEMPTS):  # offers whose budget ran out meanwhile are replaced
            picked = ranker.top(weighed.priority, allowed, request.k, self.offers.category,
                                self.settings.max_per_category, then=prepared.scores)
            explored = (self._explore(picked, allowed, weighed.priority, now) if exploring
                        else None)
            if explored is not None:
                picked = explored.items
            filling = ranker.fill(arbiter.fallback_rank, allowed, picked,
                                  request.k - len(picked))
            chosen = np.concatenate([picked, filling])
            refused = (chosen[:0] if request.preview
                       else self.spend(arbiter, chosen[~np.isin(chosen, spent)], now))
            spent = np.concatenate([spent, chosen[~np.isin(chosen, refused)]])
            if not len(refused):
                break
            allowed = allowed.copy()
            allowed[refused] = False
        kept = ~np.isin(picked, refused)
        picked, filling = picked[kept], filling[~np.isin(filling, refused)]
        removed, removed_offers = ranker.removed(prepared.scores, prepared.masks, picked,
                                                 request.k, self.offers.ids)
        reasons = self.reasons.of(request.customer_id, prepared.scored, prepared.stage, picked,
                                  prepared.anchors)
        probabilities: list[float] = []
        if explored is not None:
            reasons = [EXPLORED if was else reason for reason, was in zip(
                reasons, explored.explored[kept], strict=True)]
            probabilities = [*explored.probabilities[kept].tolist(), *[1.0] * len(filling)]
        offers = [self._offer(i, rank, prepared.scores, reasons[rank], weighed,
                              request.explain) for rank, i in enumerate(picked)]
        offers += [self._offer(i, len(offers) + n, prepared.scores, FEATURED, weighed,
                               request.explain) for n, i in enumerate(filling)]
        priorities = [float(weighed.priority[i]) for i in np.concatenate([picked, filling])]
        return Ranking(request_id, self.version, request.customer_id, prepared.stage,
                       prepared.fallback, offers, removed=removed, removed_offers=removed_offers,
                       policy_version=arbiter.version, priorities=priorities, arm=arm,
                       probabilities=probabilities)

    def _explore(self, picked: np.ndarray, allowed: np.ndarray, priority: np.ndarray,
                 now: datetime) -> Explored:
        exploration = self.settings.exploration
        return explore(picked, allowed, self.posteriors.now(now), self.offers.category,
                       self.settings.max_per_category, exploration.share, self.rng, priority,
                       among=exploration.candidates)

    def _offer(self, item: int, rank: int, scores: np.ndarray, reason: str,
               weighed: Priorities, explain: bool) -> Offer:
        offer = Offer(str(self.offers.ids[item]), str(self.offers.titles[item]), rank + 1,
                      round(float(scores[item]), 6), reason)
        if explain:
            offer.priority = round(float(weighed.priority[item]), 10)
            offer.components = weighed.of(item)
        return offer

    def similar(self, product_id: str, k: int, channel: str, now: datetime,
                consent: Consent | None, customer_id: str | None) -> Ranking:
        return similar(self, product_id, k, channel, now, consent, customer_id)

    def newsletter(self, customer_ids: list[str], blocks: tuple[str, ...], now: datetime,
                   preview: bool = False) -> list[Letter]:
        """Per customer, distinct offers for the requested blocks or why there is no mail
        (``preview``: the console's look, which takes nothing from budgets)."""
        return self._newsletter.letters(customer_ids, blocks, now, preview)


def _joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two index arrays as one (no copy where one is empty: the usual case per request)."""
    if not len(second):
        return first
    return second if not len(first) else np.concatenate([first, second])
