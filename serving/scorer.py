"""One customer's scores for a request: the model's answer, else the best fallback (from the
customer's profile for models that read customer features, popular in the region, popular
overall), or popularity alone without personalisation consent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy import sparse

from serving.live import Activity, with_history
from serving.policy import Consent
from serving.state import CustomerState
from training.models.base import PROFILE, Query, Recommender, csr_rows

NON_PERSONALISED = "non_personalised"


@dataclass(frozen=True)
class CustomerScores:
    """Scores over every offer, the fallback that made them (None: the model ranked the
    customer) and the history given at request time that they came from (None: the model's
    stored history)."""

    values: np.ndarray
    fallback: str | None
    history: sparse.csr_matrix | None = None


@dataclass(frozen=True)
class Batch:
    """Customers scored together (the newsletter): their rows of one model answer."""

    rows: dict[str, int]
    scores: np.ndarray
    fallback: np.ndarray


class Scorer:
    def __init__(self, model: Recommender, state: CustomerState) -> None:
        self.model, self.state = model, state

    def batch(self, customer_ids: list[str]) -> Batch:
        """The model's answer for customers serving knows, from their stored history."""
        known = [c for c in customer_ids if self.state.row_of(c) >= 0]
        if not known:
            return Batch({}, np.zeros((0, len(self.model.items)), np.float32),
                         np.zeros(0, object))
        answer = self.model.answer(Query(known))
        return Batch({c: i for i, c in enumerate(known)}, answer.scores, answer.fallback)

    def history(self, row: int, act: Activity) -> sparse.csr_matrix | None:
        """The customer's history with their activity since the snapshot and the request's
        context added, None where the activity changes nothing (the model's own applies)."""
        if not act.changes_history:
            return None
        stored = csr_rows(self.model.matrix, np.array([row]))
        items, weights = with_history(stored.indices, stored.data, act, len(self.model.items))
        # the offers come sorted and once each: the row's arrays as they are, without the
        # conversion from coordinates (half of this method's time)
        return sparse.csr_matrix((weights.astype(np.float32), items,
                                  np.array([0, len(items)])), shape=(1, len(self.model.items)))

    def score(self, customer_id: str, row: int, region: str | None, stage: str,
              now: datetime, consent: Consent, history: sparse.csr_matrix | None = None,
              batch: Batch | None = None) -> CustomerScores:
        """``history``: from :meth:`history` (None: the model's stored one); ``batch``:
        where the customer was scored already from their stored history."""
        if not consent.personalization:
            return CustomerScores(self.model.popularity.astype(np.float64), NON_PERSONALISED)
        if history is None and batch is not None and customer_id in batch.rows:
            i = batch.rows[customer_id]
            scores, fallback = batch.scores[i], batch.fallback[i]
        else:
            features = None
            if self.model.reads_customer_features and history is None and row < 0:
                features = self.state.profile(row, region, stage, now)
            answer = self.model.answer(Query([customer_id], history, features))
            scores, fallback = answer.scores[0], answer.fallback[0]
        if fallback is None:
            return CustomerScores(scores.astype(np.float64), None, history)
        if fallback == PROFILE:
            return CustomerScores(scores.astype(np.float64), PROFILE)
        values = scores.astype(np.float64)[None, :]
        chosen = self.state.popular_in_region.apply(values, np.array([fallback]), [region])[0]
        return CustomerScores(values[0], chosen)
