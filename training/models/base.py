"""The one small interface every candidate model implements."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numba
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from features.config import from_flat, to_flat
from features.ids import MISSING, IdMap
from training.data import TrainData

FORMAT_VERSION = 1


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(42, description="Seed of every random choice the model makes.")


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: data, read by the tuner."""

    kind: Literal["int", "float", "categorical"]
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Reason:
    """Why an offer ranks: a code serving turns into words, and the product it leans on."""

    code: Literal["because_you_bought", "popular", "similar_customers"]
    anchor: str | None = None


POPULAR_REASON = Reason("popular")
POPULAR = "popular"  # the fallback of a customer a model cannot rank
PROFILE = "profile"  # ranked from the customer features given, without history


@dataclass(frozen=True)
class Query:
    """Customers to score. ``history`` (customers x offers, in the order of the model's
    offers) replaces their stored training rows, e.g. a session's events or what happened
    since training: the model then scores them from it as it scores customers it was not
    trained on, so what it learnt per customer is computed anew from that history (ALS
    solves the customer's factors exactly). ``customer_features`` describes customers the
    model may not know (read by models with ``reads_customer_features``)."""

    customer_ids: list[str] | np.ndarray | pd.Index
    history: sparse.csr_matrix | None = None
    customer_features: pd.DataFrame | None = None


@dataclass(frozen=True)
class Scored:
    """A model's answer: scores (customers x offers, float32), per customer the fallback
    that made them (None where the model ranked the customer itself, ``PROFILE`` or
    ``POPULAR``), and the history they were scored from."""

    scores: np.ndarray
    fallback: np.ndarray
    history: sparse.csr_matrix

    @property
    def personalised(self) -> np.ndarray:
        return np.array([f is None for f in self.fallback], dtype=bool)


class Recommender(ABC):
    """Fit on :class:`TrainData`; score many customers x all offers in one call.

    Scores are comparable within a customer's row only. Customers the model does not know,
    and with no history given, get the popularity scores (:meth:`answer` says which).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    search_space: ClassVar[dict[str, Param]] = {}
    # True for models that rank customers without history from their features alone
    reads_customer_features: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{self.kind} needs a {self.config_class.__name__}")
        self.customers = IdMap([])
        self.items = IdMap([])
        self.matrix = sparse.csr_matrix((0, 0), dtype=np.float32)
        self.popularity = np.zeros(0, dtype=np.float32)

    # --- fitting ------------------------------------------------------------------------

    def fit(self, data: TrainData) -> Self:
        self.customers, self.items, self.matrix = data.customers, data.items, data.matrix
        buyers = data.buyers().astype(np.float32)
        self.popularity = buyers / max(float(buyers.max(initial=0.0)), 1.0)
        self._fit(data)
        return self

    @abstractmethod
    def _fit(self, data: TrainData) -> None: ...

    # --- scoring ------------------------------------------------------------------------

    def answer(self, query: Query) -> Scored:
        """Scores of the query's customers with, per customer, what made them: the model's
        own ranking, or the fallback it fell to. Customers it cannot rank get popularity."""
        if not len(self.items):
            raise RuntimeError(f"the {self.kind} model is not fitted: call fit() or load() first")
        rows = self.customers.index_of(np.asarray(query.customer_ids, dtype=object))
        if query.history is None:
            history = csr_rows(self.matrix, rows)
        else:  # the history given stands for everything the model knows of them
            history = query.history
            rows = np.full(len(rows), MISSING, dtype=np.int64)
        if history.shape != (len(rows), len(self.items)):
            raise ValueError(f"history of shape {history.shape} for {len(rows)} customers and "
                             f"{len(self.items)} offers")
        features = query.customer_features
        fallback = self._fallback(rows, history, features)
        popular = fallback == POPULAR
        if not popular.any():
            scores = self._score(rows, history, features).astype(np.float32, copy=False)
        else:  # only the customers it ranks are scored: the rest get popularity
            scores = np.empty((len(rows), len(self.items)), dtype=np.float32)
            scores[popular] = self.popularity
            ranked = np.flatnonzero(~popular)
            if len(ranked):
                scores[ranked] = self._score(rows[ranked], history[ranked],
                                             None if features is None else features.iloc[ranked])
        return Scored(scores, fallback, history)

    def score(
        self,
        customer_ids: list[str] | np.ndarray | pd.Index,
        history: sparse.csr_matrix | None = None,
        customer_features: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Scores (customers x offers, float32) in the order of ``self.items``: the scores of
        :meth:`answer` without what made them."""
        return self.answer(Query(customer_ids, history, customer_features)).scores

    def _fallback(self, rows: np.ndarray, history: sparse.csr_matrix,
                  customer_features: pd.DataFrame | None) -> np.ndarray:
        """Per customer, None where the model ranks them, else the fallback: customers
        without any history get popularity."""
        fallback = np.full(history.shape[0], None, dtype=object)
        fallback[np.diff(history.indptr) == 0] = POPULAR
        return fallback

    def raw_scores(self, rows: np.ndarray, history: sparse.csr_matrix,
                   customer_features: pd.DataFrame | None = None) -> np.ndarray:
        """The model's own scores of customer ``rows`` (-1: unknown) from ``history``, with
        no fallback: what a model that combines others (the blend) adds up."""
        return self._score(rows, history, customer_features)

    @abstractmethod
    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray: ...

    # --- erasure ------------------------------------------------------------------------

    def forget(self, customer_ids: list[str] | np.ndarray) -> int:
        """Remove what the model holds for these customers (their history row and their own
        parameters); they are unknown to the model afterwards. Returns how many it knew."""
        rows = self.customers.index_of(np.asarray(customer_ids, dtype=object))
        rows = np.unique(rows[rows >= 0])
        if not len(rows):
            return 0
        keep = np.ones(self.matrix.shape[0], dtype=np.float32)
        keep[rows] = 0.0
        matrix = (sparse.diags(keep) @ self.matrix).tocsr()
        matrix.eliminate_zeros()
        self._forget_rows(rows)
        self.matrix = matrix
        self.customers = self.customers.replaced(rows, "\0erased:")
        return len(rows)

    def _forget_rows(self, rows: np.ndarray) -> None:  # noqa: B027
        """Zero the per-customer parameters of ``rows`` (models that have any)."""

    def held(self, customer_id: str) -> dict[str, Any]:
        """What the model holds of one customer, readable (a data subject's access request):
        whether it knows them, the history it scores them from (offer and weight) and its
        own parameters of them, where it has any."""
        row = int(self.customers.index_of(np.asarray([customer_id], dtype=object))[0])
        held: dict[str, Any] = {"model": self.kind, "known": row >= 0, "history": []}
        if row >= 0:
            history = self.matrix[row]
            held["history"] = [{"product_id": str(self.items.names[i]), "weight": float(w)}
                               for i, w in zip(history.indices, history.data, strict=True)]
            held.update(self._held_row(row))
        return held

    def _held_row(self, row: int) -> dict[str, Any]:
        """The model's own parameters of customer ``row``, by name (models that have any)."""
        return {}

    # --- explaining ---------------------------------------------------------------------

    def pair_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray | None:
        """Similarity of each target offer to the anchor offer beside it (parallel arrays),
        or None for a model without one. Each pair's value does not depend on the others, so
        a reason is the same whether asked for alone or in a batch."""
        return None

    def item_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray | None:
        """Similarity of target offers (rows) to anchor offers (columns), or None."""
        similarity = self.pair_similarity(np.repeat(targets, len(anchors)),
                                          np.tile(anchors, len(targets)))
        return None if similarity is None else similarity.reshape(len(targets), len(anchors))

    def bought_row(self, row: int) -> np.ndarray:
        """The offers of stored customer ``row``'s history with a positive weight (none for
        -1), read from the matrix's arrays (no sparse matrix built per request)."""
        if row < 0:
            return self.matrix.indices[:0]
        start, end = self.matrix.indptr[row], self.matrix.indptr[row + 1]
        return self.matrix.indices[start:end][self.matrix.data[start:end] > 0]

    def explain(self, customer_id: str, product_ids: list[str],
                history: sparse.csr_matrix | None = None) -> list[Reason]:
        """A reason per product: the bought product it is most similar to, else popularity."""
        anchors = (history.indices[history.data > 0] if history is not None
                   else self.bought_row(self.customers.index_of([customer_id])[0]))
        targets = self.items.index_of(product_ids)
        if not (targets >= 0).all():
            return [POPULAR_REASON] * len(targets)
        return self._anchored(targets, [anchors] * len(targets))

    def explain_rows(self, rows: np.ndarray, targets: np.ndarray) -> list[Reason]:
        """:meth:`explain` of one offer (``targets``, indices) for each of many stored
        customers (``rows``), from their stored history."""
        return self._anchored(targets, [self.bought_row(row) for row in rows.tolist()])

    def _anchored(self, targets: np.ndarray, anchors: list[np.ndarray]) -> list[Reason]:
        """Per target, the anchor of its own list that is most similar to it (the first of
        equals; never the target itself) where that similarity is positive, else
        popularity."""
        counts = np.array([len(a) for a in anchors], dtype=np.int64)
        if not counts.sum():
            return [POPULAR_REASON] * len(targets)
        pair_targets = np.repeat(targets, counts)
        pair_anchors = np.concatenate(anchors)
        similarity = self.pair_similarity(pair_targets, pair_anchors)
        if similarity is None:
            return [POPULAR_REASON] * len(targets)
        best = _most_similar(counts, pair_targets, pair_anchors, similarity)
        names = self.items.names
        return [Reason("because_you_bought", str(names[pair_anchors[b]])) if b >= 0
                else POPULAR_REASON for b in best.tolist()]

    # --- configuration ------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return to_flat(self.config)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls(from_flat(cls.config_class, params))

    # --- persistence --------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "format": FORMAT_VERSION, "config": self.params()}
        (path / "model.json").write_text(json.dumps(meta, indent=2))
        self.customers.save(path / "customers.json")
        self.items.save(path / "items.json")
        sparse.save_npz(path / "history.npz", self.matrix)
        arrays = {"popularity": self.popularity, **self._arrays()}
        # numpy's stub reads any keyword as its allow_pickle flag
        np.savez(path / "arrays.npz", **arrays)  # type: ignore[arg-type]
        return path

    def _arrays(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (no pickles in a model artifact)."""
        return {}

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:  # noqa: B027
        """Inverse of :meth:`_arrays`; ``path`` holds any extra files the model wrote."""

    @classmethod
    def load(cls, path: Path) -> Recommender:
        from training.models import MODELS

        meta = json.loads((path / "model.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: model format {meta.get('format')} is not supported "
                             f"(this code reads format {FORMAT_VERSION})")
        model_class = MODELS[meta["kind"]]
        model = model_class.from_params(meta["config"])
        model.customers = IdMap.load(path / "customers.json")
        model.items = IdMap.load(path / "items.json")
        model.matrix = sparse.load_npz(path / "history.npz").tocsr()
        with np.load(path / "arrays.npz", allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        model.popularity = arrays.pop("popularity")
        model._restore(arrays, path)
        return model


def csr_rows(matrix: sparse.csr_matrix, rows: np.ndarray) -> sparse.csr_matrix:
    """Rows of a CSR matrix by position, an empty row for -1, sliced from its arrays (a
    request's one row costs microseconds instead of a sparse product)."""
    if len(rows) == 1:  # a request's row: a slice, where the general steps took 25 us more
        row = int(rows[0])
        start, end = (matrix.indptr[row], matrix.indptr[row + 1]) if row >= 0 else (0, 0)
        return sparse.csr_matrix((matrix.data[start:end].copy(),
                                  matrix.indices[start:end].copy(),
                                  np.array([0, end - start], dtype=np.int64)),
                                 shape=(1, matrix.shape[1]))
    take, indptr = row_entries(matrix, rows)
    return sparse.csr_matrix((matrix.data[take], matrix.indices[take], indptr),
                             shape=(len(rows), matrix.shape[1]))


def row_entries(matrix: sparse.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the stored entries of ``rows`` (-1: none) sit in a CSR matrix's ``data`` and
    ``indices``, row after row, and the ``indptr`` of those rows taken on their own."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.where(rows >= 0, matrix.indptr[np.maximum(rows, 0)], 0)
    ends = np.where(rows >= 0, matrix.indptr[np.maximum(rows, 0) + 1], 0)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=indptr[1:])
    # position j of output row r reads matrix entry starts[r] + (j - indptr[r])
    take = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1],
                                                             ends - starts)
    return take, indptr


def summed(history: sparse.csr_matrix) -> sparse.csr_matrix:
    """``history`` with each row's repeated entries added up and its offers in order (a
    copy where it has any; scipy's comparisons do the same before they compare)."""
    if history.has_canonical_format:
        return history
    history = history.copy()
    history.sum_duplicates()
    return history


@numba.njit(nogil=True, cache=True)
def _most_similar(counts, targets, anchors, similarity):
    """Per target (its ``counts`` pairs in a row), the pair of the first anchor most similar
    to it, never itself, where that similarity is finite and positive; else -1 (a NaN among
    its pairs counts as none). One compiled pass where numpy took a dozen calls: a
    request's reasons for 10 offers of the Online Retail blend took 36 us, not 62."""
    best = np.full(len(counts), -1, dtype=np.int64)
    start = 0
    for target in range(len(counts)):
        chosen, highest, unordered = -1, -np.inf, False
        for pair in range(start, start + counts[target]):
            value = similarity[pair]
            if anchors[pair] == targets[pair]:
                continue
            if value != value:
                unordered = True
            elif value > highest:
                chosen, highest = pair, value
        if not unordered and 0 < highest < np.inf:
            best[target] = chosen
        start += counts[target]
    return best


def row_owners(matrix: sparse.csr_matrix) -> np.ndarray:
    """The row of each stored entry of a CSR matrix, parallel to its ``indices``."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))


def normalised_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def cosine_pairs(vectors: np.ndarray, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Cosine of each target's vector with its anchor's (parallel index arrays), pair by pair
    (a matrix product would round a pair differently with other pairs beside it)."""
    return np.einsum("ij,ij->i", normalised_rows(vectors[targets]),
                     normalised_rows(vectors[anchors]))
