"""The ranking engine: one loaded model with its serving context, turning a request into a
policed, explained list of offers. Plain Python over arrays; the BentoML service only wires
HTTP to it. An engine is immutable once built except for erasure, so a new model is served by
building a new engine and swapping the reference.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import sparse

from features.columns import CHANNELS, Stage
from features.columns import Columns as C
from features.config import LifecycleConfig
from features.context import read_context
from features.ids import IdMap
from features.settings import Settings
from features.side import CUSTOMER_FEATURES
from features.state import age_band, stage_from_days
from serving import policy
from serving.policy import RULES, Consent, Offers
from serving.store import NO_EXPOSURE, Exposure, Store
from training.models.base import Reason, Recommender

NS_PER_DAY = 86_400 * 10**9
BLOCKS = ("profile", "lifecycle", "last_visit", "regional")
CONTEXT_DIR = "context"


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


    @classmethod
    def from_settings(cls, settings: Settings) -> PolicySettings:
        return cls(settings.personalization_default == "granted",
                   settings.contact_max_impressions, settings.contact_window_days,
                   settings.max_per_category)


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


@dataclass
class Offer:
    product_id: str
    title: str
    rank: int
    score: float
    reason: str


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


class Resolved(NamedTuple):
    row: int  # -1 for a customer serving does not know
    now_ns: int
    stage: str
    session: np.ndarray  # offer indices of the session and the product looked at
    cart: np.ndarray


@dataclass
class Prepared:
    """One customer's request resolved against the engine: scores and the policy masks."""

    stage: str
    region: str | None
    scores: np.ndarray
    fallback: str | None
    masks: dict[str, np.ndarray]
    history: sparse.csr_matrix | None
    session_based: bool


class Engine:
    """A model, its offer table and the customer state serving reads, as arrays."""

    def __init__(self, model: Recommender, version: str, tables: dict[str, pd.DataFrame],
                 lifecycle: LifecycleConfig, store: Store, settings: PolicySettings) -> None:
        self.model, self.version, self.store, self.settings = model, version, store, settings
        self.lifecycle = lifecycle
        self.offers = Offers.from_frame(tables["offers"], model.items.ids)
        self.items = model.items
        profile = tables["customers"]
        self.customers = IdMap(profile[C.customer])
        self.first_ns = _ns(profile["first_purchase"])
        self.last_ns = _ns(profile["last_purchase"])
        # own, writable copies: erasure clears a customer's row in place
        self.usual_gap = profile["usual_gap_days"].to_numpy(dtype=float, copy=True)
        self.region = profile[C.region].astype(object).where(profile[C.region].notna(), None
                                                            ).to_numpy(dtype=object, copy=True)
        self.birth_year = pd.to_numeric(profile[C.birth_year], errors="coerce").to_numpy(
            float, copy=True)
        self.segment = profile["segment"].astype(object).where(profile["segment"].notna(), None
                                                              ).to_numpy(dtype=object, copy=True)
        self.bought = self._matrix(tables["bought"], _ns(tables["bought"]["last_purchase"])
                                   .astype(np.float64) / NS_PER_DAY)
        self.returned = self._matrix(tables["returned"], None)
        visits = tables["last_visit"]
        self.last_visit = self._matrix(visits, visits["position"].to_numpy(float) + 1.0)
        self.regions = pd.Index(sorted({r for r in self.region if r}))
        self.regional = self._regional_popularity()
        self.erased = np.zeros(len(self.customers), dtype=bool)

    @classmethod
    def load(cls, folder: Path, version: str, store: Store, settings: PolicySettings) -> Engine:
        """Load a model folder with its serving context and check they fit together."""
        model = Recommender.load(folder)
        tables, config, _ = read_context(folder / CONTEXT_DIR)
        consents = tables["consents"]
        store.seed_consents(consents, f"{len(consents)}:"
                            f"{int(pd.util.hash_pandas_object(consents, index=False).sum())}")
        engine = cls(model, version, tables, config.lifecycle, store, settings)
        engine.forget_erased()
        engine.check()
        return engine

    def check(self) -> None:
        """Refuse a model that cannot serve: score a known and an unknown customer."""
        probe = [*self.customers.ids[:1], "\0probe"]
        scores = self.model.score(probe)
        if scores.shape != (len(probe), len(self.offers)) or not np.isfinite(scores).all():
            raise ValueError(f"model version {self.version} gives scores of shape "
                             f"{scores.shape} (or non-finite ones) for {len(self.offers)} offers")

    # --- state ------------------------------------------------------------------------

    def _matrix(self, frame: pd.DataFrame, values: np.ndarray | None) -> sparse.csr_matrix:
        rows = self.customers.index_of(frame[C.customer])
        cols = self.items.index_of(frame[C.product])
        keep = (rows >= 0) & (cols >= 0)
        data = np.ones(len(frame)) if values is None else np.asarray(values, dtype=np.float64)
        return sparse.csr_matrix((data[keep], (rows[keep], cols[keep])),
                                 shape=(len(self.customers), len(self.items)))

    def _regional_popularity(self) -> np.ndarray:
        codes = self.regions.get_indexer(pd.Index(self.region, dtype=object))
        known = np.flatnonzero(codes >= 0)
        member = sparse.csr_matrix((np.ones(len(known)), (codes[known], known)),
                                   shape=(len(self.regions), len(self.customers)))
        buyers = np.asarray((member @ (self.bought > 0).astype(np.float64)).todense())
        return buyers / np.maximum(buyers.max(axis=1, keepdims=True), 1.0)

    def forget_erased(self) -> None:
        """Drop customers erased through the API, also from a model trained before."""
        tokens = self.store.erased_tokens()
        if tokens:
            ids = self.customers.ids.to_numpy(dtype=object)
            gone = ids[np.isin(self.store.tokens(ids), list(tokens))]
            for customer_id in gone:
                self.forget(str(customer_id))

    def forget(self, customer_id: str) -> dict[str, int]:
        """Erase what the engine holds for one customer; counts of what was removed."""
        row = self.customers.index_of([customer_id])[0]
        held = {"model_rows": self.model.forget([customer_id])}
        if row < 0:
            return held | {"state_rows": 0}
        self.erased[row] = True
        for name in ("bought", "returned", "last_visit"):
            matrix = getattr(self, name).tolil()
            matrix.rows[row], matrix.data[row] = [], []
            setattr(self, name, matrix.tocsr())
        self.first_ns[row] = self.last_ns[row] = np.iinfo(np.int64).min
        self.usual_gap[row], self.birth_year[row] = np.nan, np.nan
        self.region[row] = self.segment[row] = None
        return held | {"state_rows": 1}

    def row_of(self, customer_id: str) -> int:
        row = self.customers.row(customer_id)
        return -1 if row >= 0 and self.erased[row] else row

    def stage(self, row: int, now_ns: int) -> str:
        if row < 0 or self.first_ns[row] == np.iinfo(np.int64).min:
            return Stage.prospect
        days = np.array([(now_ns - self.first_ns[row]) / NS_PER_DAY])
        since_last = np.array([(now_ns - self.last_ns[row]) / NS_PER_DAY])
        return str(stage_from_days(days, since_last, self.usual_gap[row:row + 1],
                                   self.lifecycle)[0])

    def age(self, row: int, now: datetime) -> int | None:
        if row < 0 or np.isnan(self.birth_year[row]):
            return None
        return now.year - int(self.birth_year[row])

    # --- requests -----------------------------------------------------------------------

    def indices(self, product_ids: list[str], what: str) -> np.ndarray:
        found = self.items.index_of(product_ids) if product_ids else np.zeros(0, np.int64)
        unknown = [pid for pid, i in zip(product_ids, found, strict=True) if i < 0]
        if unknown:
            raise RequestError(f"unknown product id(s) in {what}: {unknown[:5]}")
        return found

    def resolve(self, request: Request, now: datetime) -> Resolved:
        """Check the request's channel and offers, and find the customer and their stage."""
        if request.channel not in CHANNELS:
            raise RequestError(f"unknown channel {request.channel!r}; known: {list(CHANNELS)}")
        now_ns = int(np.datetime64(now, "ns").astype(np.int64))
        row = self.row_of(request.customer_id)
        session = self.indices([*request.session, *([request.product_id] if request.product_id
                                                   else [])], "session/product_id")
        cart = self.indices(request.cart, "cart")
        return Resolved(row, now_ns, self.stage(row, now_ns), session, cart)

    def prepare(self, request: Request, now: datetime, consent: Consent,
                scores: np.ndarray | None = None, exposure: Exposure | None = None
                ) -> Prepared:
        """Scores and every rule's mask for one customer (``scores`` when batch-scored)."""
        row, now_ns, stage, session, cart = self.resolve(request, now)
        region = request.region or (self.region[row] if row >= 0 else None)
        scores, fallback, history, session_based = self._scores(
            request.customer_id, row, region, stage, now, consent,
            np.r_[session, cart].astype(np.int64), scores)
        masks = {
            "eligibility": policy.eligible(self.offers, now_ns, request.channel, region,
                                           self.age(row, now)),
            "consent": policy.consented(self.offers, consent),
            "lifecycle": policy.in_stage(self.offers, stage),
            "exclusion": self._exclusions(row, now_ns, cart),
            "contact": self._contact(request.customer_id, now, exposure),
        }
        return Prepared(stage, region, scores, fallback, masks, history, session_based)

    def _scores(self, customer_id: str, row: int, region: str | None, stage: str,
                now: datetime, consent: Consent, session: np.ndarray,
                batch_scores: np.ndarray | None
                ) -> tuple[np.ndarray, str | None, sparse.csr_matrix | None, bool]:
        """The model's scores, else the best fallback: from the customer's profile (models
        that read customer features), popular in the region, popular overall."""
        if not consent.personalization:
            return self.model.popularity.astype(np.float64), "non_personalised", None, False
        history = None
        if row < 0 and len(session):
            history = sparse.csr_matrix((np.ones(len(session), np.float32),
                                         (np.zeros(len(session), np.int64), session)),
                                        shape=(1, len(self.items)))
        model_row = np.array([self.model.customers.row(customer_id) if row >= 0 else -1])
        if model_row[0] >= 0 or history is not None:
            stored = history if history is not None else self.model._stored_history(model_row)
            if not self.model.is_fallback(model_row, stored)[0]:
                scores = batch_scores if batch_scores is not None and history is None else \
                    self.model.score([customer_id], history=stored)[0]
                return scores.astype(np.float64), None, history, history is not None
        if self.model.reads_customer_features and history is None:
            profile = self.profile(row, region, stage, now)
            empty = self.model._stored_history(np.array([-1]))
            if not self.model.is_fallback(np.array([-1]), empty, profile)[0]:
                scores = self.model.score([customer_id], history=empty,
                                          customer_features=profile)[0]
                return scores.astype(np.float64), "profile", None, False
        if region is not None and region in self.regions:
            return self.regional[self.regions.get_loc(region)], "popular_in_region", None, False
        return self.model.popularity.astype(np.float64), "popular", None, False

    def profile(self, row: int, region: str | None, stage: str, now: datetime
                ) -> pd.DataFrame:
        """What is known of a customer the model cannot score by history, as its features."""
        birth = self.birth_year[row] if row >= 0 else np.nan
        values = {C.region: region, "lifecycle_stage": stage,
                  "age_band": age_band(pd.Series([birth]), pd.Timestamp(now))[0],
                  "segment": self.segment[row] if row >= 0 else None}
        return pd.DataFrame({name: [values[name]] for name in CUSTOMER_FEATURES})

    def _exclusions(self, row: int, now_ns: int, cart: np.ndarray) -> np.ndarray:
        if row < 0:
            return policy.not_excluded(self.offers, np.zeros(0, np.int64), np.zeros(0), np.zeros(
                0, np.int64), cart)
        start, end = self.bought.indptr[row], self.bought.indptr[row + 1]
        bought = self.bought.indices[start:end]
        days_ago = now_ns / NS_PER_DAY - self.bought.data[start:end]
        returned = self.returned.indices[self.returned.indptr[row]:self.returned.indptr[row + 1]]
        return policy.not_excluded(self.offers, bought, days_ago, returned, cart)

    def _contact(self, customer_id: str, now: datetime, exposure: Exposure | None
                 ) -> np.ndarray:
        if exposure is None:
            since = now - timedelta(days=self.settings.contact_window_days)
            exposure = self.store.exposure(customer_id, since)
        shown = np.fromiter((self.items.row(p) for p in exposure.product_ids), dtype=np.int64,
                            count=len(exposure.product_ids))
        known = shown >= 0
        return policy.not_rested(len(self.offers), shown[known], exposure.shown[known],
                                 exposure.clicked[known], self.settings.max_impressions)

    def rank(self, request: Request, now: datetime, consent: Consent,
             scores: np.ndarray | None = None, exposure: Exposure | None = None
             ) -> Ranking:
        """The policed top ``request.k`` for one customer, with reasons."""
        if not 1 <= request.k <= 100:
            raise RequestError(f"k must be between 1 and 100, got {request.k}")
        request_id = uuid.uuid4().hex
        if not consent.allows_channel(request.channel):
            why = ("no e-mail consent with double opt-in" if request.channel == "email"
                   else f"no {request.channel} consent")
            return Ranking(request_id, self.version, request.customer_id,
                           self.resolve(request, now).stage, None, [], withheld=why)
        prepared = self.prepare(request, now, consent, scores, exposure)
        allowed = np.logical_and.reduce(list(prepared.masks.values()))
        picked = self.top(prepared.scores, allowed, request.k)
        removed, removed_offers = self.removed(prepared, picked, request.k)
        offers = self.describe(request.customer_id, prepared, picked)
        return Ranking(request_id, self.version, request.customer_id, prepared.stage,
                       prepared.fallback, offers, removed=removed, removed_offers=removed_offers)

    def top(self, scores: np.ndarray, allowed: np.ndarray, k: int,
            taken: np.ndarray | None = None) -> np.ndarray:
        """Best allowed offers by score, at most ``max_per_category`` per category."""
        candidates = np.flatnonzero(allowed)
        if not len(candidates):
            return candidates
        width = min(len(candidates), max(4 * k * self.settings.max_per_category, 64))
        while True:
            order = best_first(scores, candidates, width)
            picked = policy.diversify(order, self.offers.category,
                                      self.settings.max_per_category, k, taken)
            if len(picked) == k or width == len(candidates):
                return picked
            width = len(candidates)

    def removed(self, prepared: Prepared, picked: np.ndarray, k: int
                ) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """Which rule took each offer of the unfiltered top k (the first rule that did)."""
        raw = best_first(prepared.scores, np.arange(len(prepared.scores)), k)
        counts = dict.fromkeys(RULES, 0)
        offers = []
        served = set(picked.tolist())
        for item in raw:
            rule = next((name for name, mask in prepared.masks.items() if not mask[item]),
                        None if item in served else "diversity")
            if rule is not None:
                counts[rule] += 1
                offers.append((str(self.items.names[item]), rule))
        return counts, offers

    # --- reasons ------------------------------------------------------------------------

    def describe(self, customer_id: str, prepared: Prepared, picked: np.ndarray
                 ) -> list[Offer]:
        reasons = self.reasons(customer_id, prepared, picked)
        return [Offer(str(self.items.names[i]), str(self.offers.titles[i]), rank + 1,
                      round(float(prepared.scores[i]), 6), reasons[rank])
                for rank, i in enumerate(picked)]

    def reasons(self, customer_id: str, prepared: Prepared, picked: np.ndarray) -> list[str]:
        if not len(picked):
            return []
        model_reasons = [Reason("popular")] * len(picked)
        if prepared.fallback is None:
            model_reasons = self.model.explain(customer_id, list(self.items.names[picked]),
                                               history=prepared.history)
        return [self.reason_text(item, reason, prepared)
                for item, reason in zip(picked, model_reasons, strict=True)]

    def reason_text(self, item: int, reason: Reason, prepared: Prepared) -> str:
        if self.offers.stage_targeted[item]:
            if prepared.stage in (Stage.prospect, Stage.new):
                return "welcome offer"
            if prepared.stage in (Stage.at_risk, Stage.lapsed):
                return "welcome back offer"
            return "an offer for our regular customers"
        if reason.code == "because_you_bought" and reason.anchor is not None:
            anchor = self.items.row(reason.anchor)
            if anchor >= 0 and not self.offers.sensitive[anchor]:  # never named in a reason
                verb = "looked at" if prepared.session_based else "bought"
                return f"because you {verb} {self.offers.titles[anchor]}"
            return "picked for you"
        if reason.code == "similar_customers":
            return "popular with customers like you"
        return {"popular_in_region": "popular in your region",
                "profile": "popular with customers like you",
                "non_personalised": "popular right now"}.get(prepared.fallback or "",
                                                             "popular right now")

    # --- similar offers ------------------------------------------------------------------

    def similar(self, product_id: str, k: int, channel: str, now: datetime,
                consent: Consent | None, customer_id: str | None) -> Ranking:
        if not 1 <= k <= 100:
            raise RequestError(f"k must be between 1 and 100, got {k}")
        anchor = int(self.indices([product_id], "product_id")[0])
        scores = self.similarity_to(anchor)
        consent = consent or Consent(False, frozenset(), False)
        request = Request(customer_id or "\0anonymous", channel, k, product_id=None)
        # nobody to rest offers for without a customer: skip the feedback log
        prepared = self.prepare(request, now, consent,
                                exposure=None if customer_id else NO_EXPOSURE)
        prepared.masks["exclusion"][anchor] = False
        prepared.scores, prepared.fallback = scores, None
        allowed = np.logical_and.reduce(list(prepared.masks.values())) & (scores > 0)
        picked = self.top(scores, allowed, k)
        removed, removed_offers = self.removed(prepared, picked, k)
        name = ("similar offer" if self.offers.sensitive[anchor]
                else f"similar to {self.offers.titles[anchor]}")
        offers = [Offer(str(self.items.names[i]), str(self.offers.titles[i]), rank + 1,
                        round(float(scores[i]), 6), name) for rank, i in enumerate(picked)]
        return Ranking(uuid.uuid4().hex, self.version, customer_id or "", prepared.stage,
                       None, offers, removed=removed, removed_offers=removed_offers)

    def similarity_to(self, anchor: int) -> np.ndarray:
        """The model's item similarity to ``anchor``, else how often offers were bought by
        the customers who bought it."""
        similarity = self.model.item_similarity(np.arange(len(self.items)), np.array([anchor]))
        if similarity is not None:
            return np.asarray(similarity, dtype=np.float64).ravel()
        buyers = self.bought[:, anchor].nonzero()[0]
        together = np.asarray((self.bought[buyers] > 0).sum(axis=0), dtype=np.float64).ravel()
        return together / max(float(together.max(initial=0.0)), 1.0)

    # --- newsletter ---------------------------------------------------------------------

    def newsletter(self, customer_ids: list[str], blocks: tuple[str, ...], now: datetime
                   ) -> list[dict[str, object]]:
        """Per customer, distinct offers for the requested blocks or why there is no mail."""
        unknown_blocks = [b for b in blocks if b not in BLOCKS]
        if unknown_blocks:
            raise RequestError(f"unknown block(s) {unknown_blocks}; known: {list(BLOCKS)}")
        consents = self.store.consents_of(customer_ids, self.settings.personalization_default)
        exposures = self.store.exposures(customer_ids,
                                         now - timedelta(days=self.settings.contact_window_days))
        known_ids = [c for c in customer_ids if self.row_of(c) >= 0]
        batch = dict(zip(known_ids, self.model.score(known_ids), strict=True)) if known_ids \
            else {}
        erased = self.store.erased_tokens()
        with_records = self.store.with_consent_records(customer_ids)
        return [self.letter(customer_id, blocks, now, consents[customer_id],
                            batch.get(customer_id), exposures.get(customer_id),
                            erased, customer_id in with_records)
                for customer_id in customer_ids]

    def letter(self, customer_id: str, blocks: tuple[str, ...], now: datetime, consent: Consent,
               scores: np.ndarray | None, exposure: Exposure | None, erased: set[str],
               has_consent_record: bool) -> dict[str, object]:
        row = self.row_of(customer_id)
        base: dict[str, object] = {"customer_id": customer_id, "blocks": []}
        if erased and self.store.token(customer_id) in erased:
            return base | {"no_mail": "erased"}
        if row < 0 and not has_consent_record:
            return base | {"no_mail": "unknown customer"}
        if not consent.allows_channel("email"):
            return base | {"no_mail": "no e-mail consent with double opt-in"}
        prepared = self.prepare(Request(customer_id, "email"), now, consent, scores,
                                exposure if exposure is not None else NO_EXPOSURE)
        allowed = np.logical_and.reduce(list(prepared.masks.values()))
        placed: list[tuple[str, int, float]] = []
        for block in blocks:
            taken = np.array([i for _, i, _ in placed], dtype=np.int64)
            candidates = allowed.copy()
            candidates[taken] = False
            found = self.block(block, row, prepared, candidates, taken)
            if found is not None:
                placed.append((block, *found))
        reasons = self.reasons(customer_id, prepared,
                               np.array([i for _, i, _ in placed], np.int64))
        base["lifecycle_stage"] = prepared.stage
        base["fallback"] = prepared.fallback
        base["blocks"] = [
            {"block": block, "product_id": str(self.items.names[i]),
             "title": str(self.offers.titles[i]), "score": round(score, 6),
             "reason": ("popular in your region" if block == "regional" else
                        "from your last visit" if block == "last_visit" else reason)}
            for (block, i, score), reason in zip(placed, reasons, strict=True)
        ]
        return base

    def block(self, block: str, row: int, prepared: Prepared, candidates: np.ndarray,
              taken: np.ndarray) -> tuple[int, float] | None:
        """The block's offer and the score it was picked by."""
        scores = prepared.scores
        if block == "lifecycle":
            candidates = candidates & self.offers.stage_targeted
        elif block == "last_visit":
            visited = np.zeros(len(self.offers), dtype=bool)
            if row >= 0:
                visited[self.last_visit.indices[self.last_visit.indptr[row]:
                                                self.last_visit.indptr[row + 1]]] = True
            candidates = candidates & visited
        elif block == "regional":
            region = prepared.region
            if region is None or region not in self.regions:
                return None
            regional = self.offers.region == region
            if (candidates & regional).any():
                candidates = candidates & regional
            scores = self.regional[self.regions.get_loc(region)]
        picked = self.top(scores, candidates, 1, taken)
        return (int(picked[0]), float(scores[picked[0]])) if len(picked) else None


def best_first(scores: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best ``candidates`` by score, best first, ties in offer order (found by
    partition: everything tied with the n-th best is kept until the order is known)."""
    if n < len(candidates):
        values = scores[candidates]
        candidates = candidates[values >= values[np.argpartition(-values, n - 1)[n - 1]]]
    return candidates[np.lexsort((candidates, -scores[candidates]))][:n]


def _ns(values: pd.Series) -> np.ndarray:
    times = pd.to_datetime(values)
    return np.where(times.isna(), np.iinfo(np.int64).min,
                    times.to_numpy("datetime64[ns]").view(np.int64)).astype(np.int64)
