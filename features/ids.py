"""Ids <-> matrix rows: the one map a model and serving's customer state share.

It sits low in the import graph (numpy and pandas only), so that serving can load it without
the training stack. What happens to an id the map does not know is the caller's explicit
choice: ``index_of`` answers -1 for it (``unknown="missing"``) or raises naming the ids
(``unknown="raise"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

MISSING = -1  # the row of an id the map does not know
Unknown = Literal["missing", "raise"]
ONE_BY_ONE = 128  # ids looked up one at a time, up to this many


class UnknownIds(KeyError):
    """Ids a map was asked for and does not know."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"{len(ids)} unknown id(s), e.g. {ids[:5]}")
        self.ids = ids


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

    def index_of(self, ids: pd.Series | list[str] | np.ndarray,
                 unknown: Unknown = "missing") -> np.ndarray:
        """Row per id: ``MISSING`` for ids the map does not know, or ``UnknownIds`` raised
        with ``unknown="raise"``."""
        # up to some hundred ids, one look-up each is the faster: about 0.4 us an id, where
        # pandas' vector look-up costs about 90 us a call (a request's live events, its cart)
        if isinstance(ids, list | np.ndarray) and len(ids) <= ONE_BY_ONE:
            rows = np.fromiter((self.row(i) for i in ids), dtype=np.int64, count=len(ids))
        else:
            rows = self.ids.get_indexer(pd.Index(ids).astype(str))
        if unknown == "raise" and (rows == MISSING).any():
            raise UnknownIds([str(i) for i, r in zip(ids, rows, strict=True) if r == MISSING])
        return rows

    def row(self, id_: object) -> int:
        """Row of one id; ``MISSING`` if the map does not know it."""
        try:
            found = self.ids.get_loc(str(id_))
        except KeyError:
            return MISSING
        return found if isinstance(found, int) else MISSING

    def replaced(self, rows: np.ndarray, prefix: str) -> IdMap:
        """The same map with the ids of ``rows`` replaced by ``prefix`` and the row number,
        so that no id of theirs is kept (erasure)."""
        ids = self.names.copy()
        ids[rows] = [f"{prefix}{row}" for row in rows]
        return IdMap(ids)

    def to_list(self) -> list[str]:
        return self.ids.tolist()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_list()))

    @classmethod
    def load(cls, path: Path) -> IdMap:
        return cls(json.loads(path.read_text()))
