"""What models train on: the customer x offer matrix built from features, with its id maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from features.columns import Columns as C
from features.ids import IdMap
from features.side import CUSTOMER_FEATURES, ITEM_FEATURES

if TYPE_CHECKING:  # the snapshot module pulls in scikit-learn, which serving does not need
    from features.snapshot import Features


@dataclass
class TrainData:
    """Training input for every model.

    ``matrix`` holds the net weight of the positive (customer, offer) pairs; all other cells
    are zero. ``customer_features`` and ``item_features`` are aligned to the id maps.
    ``ages`` (when known) has the same cells as ``matrix``: days from the pair's last event
    to the moment the features describe (infinite where no event dates the pair).
    """

    customers: IdMap
    items: IdMap
    matrix: sparse.csr_matrix
    customer_features: pd.DataFrame
    item_features: pd.DataFrame
    ages: sparse.csr_matrix | None = None

    def buyers(self) -> np.ndarray:
        """Per offer, its positive customers (the matrix holds each pair once)."""
        return np.bincount(self.matrix.indices[self.matrix.data > 0],
                           minlength=self.matrix.shape[1])

    def recent_buyers(self, half_life_days: float) -> np.ndarray:
        """Per offer, its positive customers weighted by how lately they took it (one who
        took it ``half_life_days`` ago counts half): what is selling now. Zeros when the
        ages are not known."""
        if self.ages is None:
            return np.zeros(self.matrix.shape[1], dtype=np.float32)
        lately = np.exp2(-self.ages.data / half_life_days)
        counts = np.bincount(self.ages.indices, weights=lately, minlength=self.ages.shape[1])
        return counts.astype(np.float32)

    def selling_days(self) -> np.ndarray:
        """Per offer, days from the oldest of its customers' last events to the moment the
        features describe: how long it has been selling, at least (an offer all of whose
        customers took it again lately looks younger than it is). Infinite for offers no
        dated event shows, and for all when the ages are not known."""
        if self.ages is None:
            return np.full(self.matrix.shape[1], np.inf, dtype=np.float32)
        oldest = np.full(self.ages.shape[1], -np.inf, dtype=np.float32)
        np.maximum.at(oldest, self.ages.indices, self.ages.data)
        oldest[~np.isfinite(oldest)] = np.inf
        return oldest

    @classmethod
    def from_features(cls, features: Features) -> TrainData:
        items = IdMap(features.item_features[C.product])
        customers = IdMap(features.customer_state[C.customer])
        positive = features.interactions[features.interactions["positive"]]
        rows = customers.index_of(positive[C.customer])
        cols = items.index_of(positive[C.product])
        keep = (rows >= 0) & (cols >= 0)
        shape = (len(customers), len(items))
        matrix = sparse.csr_matrix(
            (positive[C.weight].to_numpy(np.float32)[keep], (rows[keep], cols[keep])),
            shape=shape,
        )
        age = (features.now - positive["last_event"]).dt.total_seconds() / 86_400.0
        ages = sparse.csr_matrix(
            (age.fillna(np.inf).to_numpy(np.float32)[keep], (rows[keep], cols[keep])),
            shape=shape,
        )
        customer_features = (features.customer_features.set_index(C.customer)
                             .reindex(customers.ids)[list(CUSTOMER_FEATURES)])
        item_features = (features.item_features.set_index(C.product)
                         .reindex(items.ids)[list(ITEM_FEATURES)])
        return cls(customers, items, matrix, customer_features.fillna("unknown"),
                   item_features.fillna("unknown"), ages)
