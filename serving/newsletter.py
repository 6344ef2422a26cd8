"""Newsletter letters: per customer, distinct offers for the blocks asked for (``profile``,
``lifecycle``, ``last_visit``, ``regional``), or why there is no mail."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from serving import ranker
from serving.arbitration import Arbiter
from serving.assignment import CONTROL
from serving.letters import BLOCK_REASONS, BLOCKS, Letter, LetterBlock
from serving.live import NOTHING, activity
from serving.newsletter_batch import Plain, compose
from serving.policy import Consent
from serving.reasons import FEATURED
from serving.requests import Prepared, Request, RequestError
from serving.scorer import Batch
from serving.state import moment_ns
from serving.store import NO_EXPOSURE, Exposure, LiveEvent

if TYPE_CHECKING:
    from serving.engine import Engine

__all__ = ["BLOCKS", "Letter", "LetterBlock", "Newsletter"]
BATCH = 1000  # customers composed together: a few customers x offers matrices in memory


class Newsletter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def letters(self, customer_ids: list[str], blocks: tuple[str, ...], now: datetime,
                preview: bool = False) -> list[Letter]:
        unknown_blocks = [b for b in blocks if b not in BLOCKS]
        if unknown_blocks:
            raise RequestError(f"unknown block(s) {unknown_blocks}; known: {list(BLOCKS)}")
        engine, store = self.engine, self.engine.store
        consents, with_records = store.consents_and_holders(
            customer_ids, engine.settings.personalization_default)
        exposures = store.exposures(customer_ids, engine.window(now))
        live = store.live_events(customer_ids, engine.as_of, now, engine.settings.live_events)
        erased = store.erased_among(customer_ids)
        for customer_id in erased:  # the model's history of them is gone, returned or not
            if engine.state.row_of(customer_id) >= 0:
                engine.forget(customer_id)
        erased = store.erased_among(erased, returned_too=False)  # not back with a consent
        batch = engine.scorer.batch(customer_ids)
        arbiter = engine.arbiter  # one policy for the call
        used = (store.budget_used(arbiter.budget_keys(now), own_reserve_free=True)
                if arbiter.budgets else None)
        plain = self.plain(customer_ids, now, consents, exposures, live, erased)
        composed: dict[str, Letter | None] = {}
        for first in range(0, len(plain), BATCH):  # the matrices of a part at a time
            part = plain[first:first + BATCH]
            composed.update(zip([p.customer_id for p in part],
                                compose(engine, part, blocks, now, batch, arbiter, used),
                                strict=True))
        letters = []
        for customer_id in customer_ids:  # budgets are taken from in the customers' order
            letter = composed.get(customer_id)
            if letter is None:
                letter = self.letter(customer_id, blocks, now, consents[customer_id], batch,
                                     exposures.get(customer_id, NO_EXPOSURE),
                                     live.get(customer_id, []), customer_id in erased,
                                     customer_id in with_records, arbiter, used, preview)
            elif not preview:
                letter = self.spent(letter, arbiter, now)
            letters.append(letter)
        return letters

    def spent(self, letter: Letter, arbiter: Arbiter, now: datetime) -> Letter:
        """The letter less the offers whose budget other letters or requests used up
        meanwhile, its impressions taken from the budgets of the others."""
        items = self.engine.items.index_of([b.product_id for b in letter.blocks])
        refused = set(self.engine.spend(arbiter, items, now).tolist())
        if not refused:
            return letter
        return replace(letter, blocks=[b for b, i in zip(letter.blocks, items.tolist(),
                                                         strict=True) if i not in refused])

    def plain(self, customer_ids: list[str], now: datetime, consents: dict[str, Consent],
              exposures: dict[str, Exposure], live: dict[str, list[LiveEvent]],
              erased: set[str]) -> list[Plain]:
        """The customers whose letters the snapshot alone makes, to be composed together:
        known to the model and not erased, with e-mail consent, not in the control group,
        and no events or responses since the snapshot."""
        engine = self.engine
        now_ns = moment_ns(now)
        plain = []
        for customer_id in dict.fromkeys(customer_ids):
            consent = consents[customer_id]
            if (customer_id in erased or live.get(customer_id)
                    or engine.state.row_of(customer_id) < 0
                    or not consent.allows_channel("email")):
                continue
            arm = engine.settings.control.arm(customer_id, now)
            exposure = exposures.get(customer_id, NO_EXPOSURE)
            if arm == CONTROL or activity([], exposure, engine.items, now_ns,
                                          engine.weights) is not NOTHING:
                continue
            plain.append(Plain(customer_id, consent, exposure, arm))
        return plain

    def letter(self, customer_id: str, blocks: tuple[str, ...], now: datetime, consent: Consent,
               batch: Batch, exposure: Exposure, events: list[LiveEvent], erased: bool,
               has_consent_record: bool, arbiter: Arbiter,
               used: dict[tuple[str, str], int] | None, preview: bool = False) -> Letter:
        engine = self.engine
        if erased:
            return Letter(customer_id, no_mail="erased")
        row = engine.state.row_of(customer_id)
        if row < 0 and not has_consent_record and not events:
            return Letter(customer_id, no_mail="unknown customer")
        if not consent.allows_channel("email"):
            return Letter(customer_id, no_mail="no e-mail consent with double opt-in")
        control = engine.settings.control
        arm = control.arm(customer_id, now)
        if arm == CONTROL:
            if control.mail == "holdout":
                return Letter(customer_id, no_mail="control group", arm=arm)
            consent = replace(consent, personalization=False)
        prepared = engine.prepare(Request(customer_id, "email"), now, consent, batch,
                                  exposure, events, not_erased=True, arbiter=arbiter, used=used)
        allowed = prepared.allowed()
        now_ns = moment_ns(now)
        priority = prepared.arbiter.priorities(prepared.scores, allowed, "email",
                                               prepared.stage, now_ns).priority
        placed: list[tuple[str, int, float]] = []
        featured: set[int] = set()
        for block in blocks:
            taken = np.array([i for _, i, _ in placed], dtype=np.int64)
            candidates = allowed.copy()
            candidates[taken] = False
            found = self.block(block, row, prepared, candidates, taken, priority)
            if found is None:  # the policy's fallback offers for the block, through the rules
                filling = ranker.fill(prepared.arbiter.fallback_blocks.get(block, taken[:0]),
                                      allowed, taken, 1)
                if len(filling):
                    found = int(filling[0]), float(prepared.scores[filling[0]])
                    featured.add(found[0])
            if found is not None:
                placed.append((block, *found))
        # an offer whose budget other letters or requests used up meanwhile is left out
        refused = set() if preview else set(engine.spend(
            arbiter, np.array([i for _, i, _ in placed], np.int64), now).tolist())
        placed = [place for place in placed if place[1] not in refused]
        reasons = engine.reasons.of(customer_id, prepared.scored, prepared.stage,
                                    np.array([i for _, i, _ in placed], np.int64),
                                    prepared.anchors)
        offers = engine.offers
        return Letter(customer_id, [
            LetterBlock(block, str(offers.ids[i]), str(offers.titles[i]), round(score, 6),
                        FEATURED if i in featured else BLOCK_REASONS.get(block, reason))
            for (block, i, score), reason in zip(placed, reasons, strict=True)
        ], prepared.stage, prepared.fallback, arm=arm)

    def block(self, block: str, row: int, prepared: Prepared, candidates: np.ndarray,
              taken: np.ndarray, priority: np.ndarray) -> tuple[int, float] | None:
        """The block's offer and the score it was picked by: by the offer policy's
        priority (ties by score), the regional block by the region's popularity."""
        engine = self.engine
        scores, key = prepared.scores, priority
        if block == "lifecycle":
            candidates = candidates & engine.offers.stage_targeted
        elif block == "last_visit":
            visited = np.zeros(len(engine.offers), dtype=bool)
            visited[engine.state.visited(row)] = True  # and what they saw or carted since
            visited[prepared.activity.seen] = visited[prepared.activity.carted] = True
            candidates = candidates & visited
        elif block == "regional":
            regional_scores = engine.state.regional_scores(prepared.region)
            if regional_scores is None:
                return None
            regional = engine.offers.region == prepared.region
            if (candidates & regional).any():
                candidates = candidates & regional
            scores = key = regional_scores
        picked = ranker.top(key, candidates, 1, engine.offers.category,
                            engine.settings.max_per_category, taken, then=scores)
        return (int(picked[0]), float(scores[picked[0]])) if len(picked) else None
