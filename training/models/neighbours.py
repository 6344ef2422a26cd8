"""Item-based models: implicit's item-item neighbours, what follows what, and EASE."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import linalg, sparse

from training.data import TrainData
from training.models.base import ModelConfig, Param, Recommender, row_owners
from training.models.products import positive, times


class ItemKNNConfig(ModelConfig):
    similarity: Literal["cosine", "bm25", "tfidf"] = Field(
        "cosine", description="How co-purchases are weighted into item similarity."
    )
    neighbours: int = Field(50, ge=1, le=2000, description="Neighbours kept per offer.")


class ItemItem(Recommender):
    """Scores are a customer's history times a sparse item-item matrix, ``similarity``."""

    # what the similarity is multiplied with: the weighted history itself, or 1 for each
    # offer the customer took
    binary: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.similarity = sparse.csr_matrix((0, 0), dtype=np.float32)

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        return times(history, self.similarity, binary=self.binary)

    def pair_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        return np.asarray(self.similarity[anchors, targets]).ravel()

    def _arrays(self) -> dict[str, np.ndarray]:
        s = self.similarity
        return {"sim_data": s.data, "sim_indices": s.indices, "sim_indptr": s.indptr,
                "sim_shape": np.asarray(s.shape)}

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.similarity = sparse.csr_matrix(
            (arrays["sim_data"], arrays["sim_indices"], arrays["sim_indptr"]),
            shape=tuple(arrays["sim_shape"]),
        )


class ItemKNN(ItemItem):
    """Item-item neighbours: how alike two offers' customers are (implicit's cosine, BM25 or
    TF-IDF)."""

    kind = "itemknn"
    config_class = ItemKNNConfig
    search_space: ClassVar[dict[str, Param]] = {
        "similarity": Param("categorical", choices=("cosine", "bm25", "tfidf")),
        "neighbours": Param("int", 10, 1000, log=True),
    }
    config: ItemKNNConfig

    def _fit(self, data: TrainData) -> None:
        from implicit import nearest_neighbours as nn
        from implicit.utils import ParameterWarning

        cls = {"cosine": nn.CosineRecommender, "bm25": nn.BM25Recommender,
               "tfidf": nn.TFIDFRecommender}[self.config.similarity]
        model = cls(K=self.config.neighbours, num_threads=1)
        with warnings.catch_warnings():
            # implicit converts its own normalised intermediate and warns about it
            warnings.simplefilter("ignore", category=ParameterWarning)
            model.fit(data.matrix, show_progress=False)
        self.similarity = model.similarity.astype(np.float32).tocsr()


class FollowsConfig(ModelConfig):
    gap_days: float = Field(
        7.0, gt=0, description="An offer follows another for a customer when their last "
        "event of it came at least this many days after their last event of the other: "
        "a later visit, not the same basket."
    )
    half_life_days: float = Field(
        90.0, gt=0, description="A follower this many days after the offer it follows counts "
        "half: what comes soon after counts most."
    )
    damping: float = Field(
        0.7, ge=0, le=1, description="How far the counts are divided by the popularity of "
        "the offer that follows (its customers to this power; the offer followed takes the "
        "rest): higher favours the offers few have, what discovery finds."
    )
    neighbours: int = Field(100, ge=1, le=2000, description="Followers kept per offer.")
    history_limit: int = Field(
        300, ge=2, description="Each customer's latest offers that count (the pairs grow "
        "with its square)."
    )


# the pairs of offers the fit holds at once, about 40 bytes each
PAIRS_AT_ONCE = 4_000_000


class Follows(ItemItem):
    """What follows what: a directed item-item matrix of how often customers took an offer
    on a later visit than another (weighted by how soon after), scored from the customer's
    offers like item neighbours. Without dated events the order is unknown and every pair of
    a customer's offers counts both ways, as plain co-purchase."""

    kind = "follows"
    config_class = FollowsConfig
    search_space: ClassVar[dict[str, Param]] = {
        "gap_days": Param("float", 1.0, 30.0, log=True),
        "half_life_days": Param("float", 7.0, 365.0, log=True),
        "damping": Param("float", 0.0, 1.0),
        "neighbours": Param("int", 20, 1000, log=True),
    }
    config: FollowsConfig
    binary = True

    def _fit(self, data: TrainData) -> None:
        c = self.config
        counts = following(data.ages if data.ages is not None else data.matrix,
                           c.gap_days, c.half_life_days, c.history_limit,
                           ordered=data.ages is not None)
        customers = data.buyers().astype(np.float32) + 1.0
        counts = (sparse.diags(customers ** (c.damping - 1.0)) @ counts
                  @ sparse.diags(customers ** -c.damping))
        self.similarity = strongest_per_row(counts.tocsr(), c.neighbours)


def following(ages: sparse.csr_matrix, gap_days: float, half_life_days: float,
              history_limit: int, ordered: bool = True) -> sparse.csr_matrix:
    """Offers x offers: per customer and pair of their offers (their ``history_limit``
    latest), 2^(-days between / half_life_days) where the second's last event came
    ``gap_days`` or more after the first's. ``ordered`` False: every pair of a customer's
    offers counts 1 both ways (nothing dates them)."""
    ages = ages.tocsr()
    owner = row_owners(ages)
    age = ages.data.astype(np.float64) if ordered else np.zeros(ages.nnz)
    dated = np.isfinite(age)
    owner, age, offer = owner[dated], age[dated], ages.indices[dated]
    order = np.lexsort((age, owner))  # each customer's latest first
    owner, age, offer = owner[order], age[order], offer[order]
    held = np.bincount(owner, minlength=ages.shape[0])
    start = np.cumsum(held) - held
    keep = np.arange(len(owner)) - start[owner] < history_limit
    owner, age, offer = owner[keep], age[keep], offer[keep]
    held = np.minimum(held, history_limit)
    start = np.cumsum(held) - held
    total = sparse.csr_matrix((ages.shape[1], ages.shape[1]), dtype=np.float32)
    pairs = held.astype(np.int64) ** 2
    ends = np.cumsum(pairs)
    first = 0
    while first < len(held):  # customers in chunks of about PAIRS_AT_ONCE pairs
        last = max(int(np.searchsorted(ends, ends[first] - pairs[first] + PAIRS_AT_ONCE,
                                       side="right")), first + 1)
        entries = np.arange(start[first], start[last - 1] + held[last - 1])
        partners = held[owner[entries]]
        left = np.repeat(entries, partners)
        right = (np.repeat(start[owner[entries]] - (np.cumsum(partners) - partners), partners)
                 + np.arange(len(left)))
        if ordered:
            later = age[left] - age[right]
            follows = later >= gap_days
            weight = np.exp2(-later[follows] / half_life_days).astype(np.float32)
        else:
            follows = left != right
            weight = np.ones(int(follows.sum()), dtype=np.float32)
        total = total + sparse.csr_matrix(
            (weight, (offer[left[follows]], offer[right[follows]])), shape=total.shape)
        first = last
    return total


def strongest_per_row(matrix: sparse.csr_matrix, keep: int) -> sparse.csr_matrix:
    """Each row's ``keep`` largest entries (ties: the lower column), in column order."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    owner = row_owners(matrix)
    order = np.lexsort((matrix.indices, -matrix.data, owner))
    held = np.diff(matrix.indptr)
    rank = np.arange(matrix.nnz) - (matrix.indptr[:-1])[owner[order]]
    chosen = np.sort(order[rank < keep])  # back in row and column order
    counts = np.minimum(held, keep)
    return sparse.csr_matrix(
        (matrix.data[chosen].astype(np.float32), matrix.indices[chosen],
         np.concatenate([[0], np.cumsum(counts)])), shape=matrix.shape)


class EASEConfig(ModelConfig):
    l2: float = Field(500.0, gt=0, description="Ridge penalty of the item-item regression.")
    binary: bool = Field(True, description="Fit on bought/not bought instead of the weights.")
    max_items: int = Field(
        30_000, ge=1, description="Refuse larger catalogues (the dense item-item matrix)."
    )


# EASE's fit at its peak: the float64 gram from its float32 product, inverted in place,
# then the float32 weights beside it (bench/results/catalogue.md measures it)
PEAK_BYTES_PER_PAIR = 14


def ease_limit(memory_share: float = 0.6) -> int:
    """The most offers EASE's fit takes within ``memory_share`` of this machine's memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int((memory_share * total / PEAK_BYTES_PER_PAIR) ** 0.5)


def ease_fits(offers: int, memory_share: float = 0.6) -> bool:
    return offers <= ease_limit(memory_share)


class EASE(Recommender):
    """Embarrassingly shallow autoencoder: a closed-form item-item regression with a zero
    diagonal (Steck 2019). Dense in the number of offers."""

    kind = "ease"
    config_class = EASEConfig
    search_space: ClassVar[dict[str, Param]] = {
        "l2": Param("float", 1.0, 10_000.0, log=True),
        "binary": Param("categorical", choices=(True, False)),
    }
    config: EASEConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.weights = np.zeros((0, 0), dtype=np.float32)

    def _inputs(self, history: sparse.csr_matrix) -> sparse.csr_matrix:
        return positive(history) if self.config.binary else history

    def _fit(self, data: TrainData) -> None:
        n = data.matrix.shape[1]
        if n > self.config.max_items:
            raise ValueError(f"EASE needs a dense {n} x {n} matrix; the catalogue is larger than "
                             f"max_items={self.config.max_items}")
        x = self._inputs(data.matrix)
        gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
        gram[np.diag_indices(n)] += self.config.l2
        # inverted in its own memory (LU then its inverse, LAPACK getrf and getri): one
        # dense float64 copy where numpy's inverse solved against an identity, three
        inverse = linalg.inv(gram, overwrite_a=True, check_finite=False)
        del gram
        inverse /= -np.diag(inverse)
        inverse[np.diag_indices(n)] = 0.0
        self.weights = _row_major(inverse)

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        # in float32 like the weights: a mixed product would convert the whole matrix
        return times(history, self.weights, binary=self.config.binary, dtype=np.float32)

    def pair_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        return self.weights[anchors, targets]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.weights = _row_major(arrays["weights"])


def _row_major(weights: np.ndarray) -> np.ndarray:
    """EASE's weights as float32 in row order. A sparse history times a column-ordered
    matrix copies the whole matrix on every call (LAPACK's inverse comes column-ordered): with
    4,000 offers, 40 ms a customer where reading their history's rows takes well under one."""
    return np.ascontiguousarray(weights, dtype=np.float32)
