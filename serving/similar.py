"""Offers similar to one product (a product page, a cart), policed like any list: for a
customer when one is named, otherwise for an anonymous visitor without personalisation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from serving import ranker
from serving.policy import Consent
from serving.requests import Offer, Ranking, Request, RequestError
from serving.store import NO_EXPOSURE

if TYPE_CHECKING:
    from serving.engine import Engine

ANONYMOUS = "\0anonymous"


def similarity_to(engine: Engine, anchor: int) -> np.ndarray:
    """The model's item similarity to ``anchor``, else how often offers were bought by the
    customers who bought it."""
    similarity = engine.model.item_similarity(np.arange(len(engine.items)), np.array([anchor]))
    if similarity is not None:
        return np.asarray(similarity, dtype=np.float64).ravel()
    return engine.state.bought_together(anchor)


def similar(engine: Engine, product_id: str, k: int, channel: str, now: datetime,
            consent: Consent | None, customer_id: str | None) -> Ranking:
    if not 1 <= k <= 100:
        raise RequestError(f"k must be between 1 and 100, got {k}")
    anchor = int(engine.indices([product_id], "product_id")[0])
    scores = similarity_to(engine, anchor)
    consent = consent or Consent(False, frozenset(), False)
    request = Request(customer_id or ANONYMOUS, channel, k)
    # nobody to rest offers for or to read events of without a customer: no store reads
    # (the placeholder id is no id a database keeps: PostgreSQL refuses its NUL)
    prepared = engine.prepare(request, now, consent,
                              exposure=None if customer_id else NO_EXPOSURE,
                              events=None if customer_id else [])
    masks = prepared.masks | {"exclusion": prepared.masks["exclusion"].copy()}
    masks["exclusion"][anchor] = False  # never the product itself
    allowed = np.logical_and.reduce(list(masks.values())) & (scores > 0)
    picked = ranker.top(scores, allowed, k, engine.offers.category,
                        engine.settings.max_per_category)
    refused = engine.spend(prepared.arbiter, picked, now)  # used up meanwhile: left out
    picked = picked[~np.isin(picked, refused)]
    removed, removed_offers = ranker.removed(scores, masks, picked, k, engine.offers.ids)
    reason = engine.reasons.similar_to(anchor)
    offers = [Offer(str(engine.offers.ids[i]), str(engine.offers.titles[i]), rank + 1,
                    round(float(scores[i]), 6), reason) for rank, i in enumerate(picked)]
    return Ranking(uuid.uuid4().hex, engine.version, customer_id or "", prepared.stage,
                   None, offers, removed=removed, removed_offers=removed_offers,
                   policy_version=prepared.policy_version)
