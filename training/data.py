"""What models train on: id maps and the customer x offer matrix built from features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from features.columns import Columns as C
from features.side import CUSTOMER_FEATURES, ITEM_FEATURES
from features.snapshot import Features


class IdMap:
    """External ids <-> matrix rows; saved with every model."""

    def __init__(self, ids: pd.Index | pd.Series | list[str] | np.ndarray) -> None:
        self.ids = pd.Index(pd.Index(ids).astype(str), name="id")
        if not self.ids.is_unique:
            raise ValueError("ids must be unique")
        # the same ids as a plain array: picking a few by position is what serving does
        # per request, and an Arrow-backed index makes each pick cost microseconds
        self.names = self.ids.to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self.ids.equals(other.ids)

    def index_of(self, ids: pd.Series | list[str] | np.ndarray) -> np.ndarray:
        """Row per id; -1 for ids the map does not know."""
        if isinstance(ids, list | np.ndarray) and len(ids) <= 16:  # a request's few ids
            return np.fromiter((self.row(i) for i in ids), dtype=np.int64, count=len(ids))
        return self.ids.get_indexer(pd.Index(ids).astype(str))

    def row(self, id_: object) -> int:
        """Row of one id; -1 if the map does not know it."""
        try:
            found = self.ids.get_loc(str(id_))
        except KeyError:
            return -1
        return found if isinstance(found, int) else -1

    def to_list(self) -> list[str]:
        return self.ids.tolist()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_list()))

    @classmethod
    def load(cls, path: Path) -> IdMap:
        return cls(json.loads(path.read_text()))


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

    def recent_buyers(self, half_life_days: float) -> np.ndarray:
        """Per offer, its positive customers weighted by how lately they took it (one who
        took it ``half_life_days`` ago counts half): what is selling now. Zeros when the
        ages are not known."""
        if self.ages is None:
            return np.zeros(self.matrix.shape[1], dtype=np.float32)
        lately = np.exp2(-self.ages.data / half_life_days)
        counts = np.bincount(self.ages.indices, weights=lately, minlength=self.ages.shape[1])
        return counts.astype(np.float32)

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
