"""A blend of EASE, ALS, item-item neighbours and what follows what on per-customer
standardised scores, with a buy-again term from the customer's own weighted history, a term
for what is selling now, one for what is new and selling and one for what is rising, given to
the customers it suits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numba
import numpy as np
import pandas as pd
from pydantic import Field
from scipy import sparse

from training.data import TrainData
from training.models.base import ModelConfig, Param, Recommender, row_owners, summed
from training.models.factorization import ALS, ALSConfig
from training.models.neighbours import (
    EASE,
    EASEConfig,
    Follows,
    FollowsConfig,
    ItemKNN,
    ItemKNNConfig,
    ease_fits,
)

log = logging.getLogger(__name__)


class BlendConfig(ModelConfig):
    ease_weight: float = Field(1.0, ge=0, description="Weight of the EASE scores.")
    als_weight: float = Field(1.0, ge=0, description="Weight of the ALS scores.")
    itemknn_weight: float = Field(0.5, ge=0, description="Weight of the neighbour scores.")
    follows_weight: float = Field(
        0.5, ge=0, description="Weight of what follows what the customer took (offers "
        "others took on a later visit), which finds what they have not bought yet."
    )
    repeat: float = Field(
        8.0, ge=0, description="Buy-again term: standard deviations added for offers the "
        "customer already has, times the offer's share of their heaviest (recency- and "
        "quantity-weighted) offer, so what they buy often and lately comes first."
    )
    trend: float = Field(
        0.8, ge=0, description="Weight of what is selling now: the offers' standardised "
        "count of customers who took them lately, the same for every customer."
    )
    trend_half_life_days: float = Field(
        7.0, gt=0, description="A customer who took an offer this many days before the "
        "training data ends counts half towards its trend."
    )
    newness: float = Field(
        0.6, ge=0, description="Weight of what is new and selling: offers that began selling "
        "less than newness_days before the training data ends, by the logarithm of their "
        "recent customers (weighted as for the trend), standardised, the same for every "
        "customer. Few customers have them yet, so they are what discovery finds."
    )
    newness_days: float = Field(
        60.0, gt=0, description="An offer whose oldest customer took it less than this many "
        "days before the training data ends counts as new."
    )
    newness_quiet_days: float = Field(
        120.0, ge=0, description="An offer counts as new only where the data shows the shop "
        "selling for at least this many days before the offer's first customer: in a short "
        "history, an offer first seen lately may be old stock that had not sold yet."
    )
    rising: float = Field(
        1.0, ge=0, description="Weight of what is rising: offers whose customers came faster "
        "lately (over trend_half_life_days) than over rising_base_days, by the logarithm of "
        "that ratio times the logarithm of their recent customers, standardised. It counts "
        "for a customer as far as the offer suits them (a logistic curve of the personal "
        "components' standardised score), so a rising offer goes first to those it fits."
    )
    rising_base_days: float = Field(
        90.0, gt=0, description="Half-life of the longer run that an offer's recent "
        "customers are set against for 'rising'."
    )
    ease_max_offers: int | None = Field(
        None, ge=1, description="Largest catalogue EASE is fitted on: past it, item "
        "neighbours take EASE's weight. None: the largest whose fit stays within 60% of this "
        "machine's memory (EASE's fit takes about 14 bytes per pair of offers at its peak), "
        "and never more "
        "than EASE's own max_items."
    )
    ease: EASEConfig = EASEConfig()
    als: ALSConfig = ALSConfig()
    itemknn: ItemKNNConfig = ItemKNNConfig(similarity="bm25", neighbours=200)
    follows: FollowsConfig = FollowsConfig()


def standardised(scores: np.ndarray) -> np.ndarray:
    """Each row to zero mean and unit spread, so components on other scales can be added:
    numpy's ``(scores - mean) / max(std, 1e-9)`` to the bit."""
    if scores.dtype == np.float32:  # the scores: each row at once, in compiled loops
        out = np.empty(scores.shape, dtype=np.float32)
        _standardise(np.ascontiguousarray(scores), out, np.float32(1.0), False)
        return out
    # the spread is numpy's std taken step by step from the centred rows, which std would
    # centre a second time: the same bits, one pass fewer
    centred = scores - scores.mean(axis=1, keepdims=True)
    squares = np.multiply(centred, centred)
    spread = np.sqrt(squares.sum(axis=1, keepdims=True) / scores.shape[1])
    del squares
    centred /= np.maximum(spread, 1e-9)
    return centred


def add_standardised(total: np.ndarray, scores: np.ndarray, weight: float) -> None:
    """``total += weight * standardised(scores)`` in place, the same bits without the
    standardised copy (float32 scores; others the plain way)."""
    if scores.dtype != np.float32 or total.dtype != np.float32:
        total += weight * standardised(scores)
        return
    _standardise(np.ascontiguousarray(scores), total, np.float32(weight), True)


@numba.njit(nogil=True, cache=True)
def _standardise(scores, out, weight, add):
    """numpy's steps row by row, each row in the processor's cache, instead of five passes
    over a batch's matrices and two new ones: numpy's pairwise sums, its mean divided in
    float64, the spread's division and square root in float32 (1,000 x 3,647 scores: 6.4 to
    6.9 against 9.1 to 10.3 ms). ``add``: ``out += weight * standardised``."""
    n = scores.shape[1]
    centred = np.empty(n, dtype=np.float32)
    squares = np.empty(n, dtype=np.float32)
    floor = np.float32(1e-9)
    for row in range(scores.shape[0]):
        values = scores[row]
        mean = np.float32(np.float64(np.float32(0.0) + _pairwise_sum(values, 0, n)) / n)
        for j in range(n):
            centred[j] = values[j] - mean
            squares[j] = centred[j] * centred[j]
        spread = np.sqrt((np.float32(0.0) + _pairwise_sum(squares, 0, n)) / np.float32(n))
        if spread < floor:  # NaN stays NaN, as with np.maximum
            spread = floor
        target = out[row]
        if add:
            for j in range(n):
                target[j] += weight * (centred[j] / spread)
        else:
            for j in range(n):
                target[j] = centred[j] / spread


@numba.njit(nogil=True, cache=True)
def _pairwise_sum(values, start, n):
    """numpy's float32 sum of ``values[start:start + n]``: eight running sums over runs of
    at most 128, a longer run split in two halves (the first a multiple of 8) whose sums are
    added. Its recursion unrolled on a stack: numba's cache does not load recursive
    functions."""
    starts = np.empty(64, dtype=np.int64)
    lengths = np.empty(64, dtype=np.int64)
    halves_done = np.zeros(64, dtype=np.int64)
    sums = np.empty(64, dtype=np.float32)
    depth, done = 0, 0
    starts[0], lengths[0] = start, n
    while depth >= 0:
        first, length = starts[depth], lengths[depth]
        if length <= 128:
            sums[done] = _run_sum(values, first, length)
            done += 1
            depth -= 1
        elif halves_done[depth] < 2:
            half = length // 2
            half -= half % 8
            child = depth + 1
            halves_done[child] = 0
            if halves_done[depth] == 0:
                starts[child], lengths[child] = first, half
            else:
                starts[child], lengths[child] = first + half, length - half
            halves_done[depth] += 1
            depth = child
        else:  # both halves summed: add them
            done -= 1
            sums[done - 1] = sums[done - 1] + sums[done]
            halves_done[depth] = 0
            depth -= 1
    return sums[0]


@numba.njit(nogil=True, cache=True)
def _run_sum(values, start, n):
    if n < 8:
        total = np.float32(0.0)
        for i in range(start, start + n):
            total += values[i]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = 8
    whole = n - n % 8
    while i < whole:
        at = start + i
        r0 += values[at]
        r1 += values[at + 1]
        r2 += values[at + 2]
        r3 += values[at + 3]
        r4 += values[at + 4]
        r5 += values[at + 5]
        r6 += values[at + 6]
        r7 += values[at + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += values[start + i]
        i += 1
    return total


def rising(recent: np.ndarray, base: np.ndarray, half_life_days: float,
           base_days: float) -> np.ndarray:
    """Per offer, how much faster its customers came lately than over the longer run: the
    logarithm of the ratio of the two rates (customers a day, each count weighted with its
    half-life; a customer per 20 days added to both, so that a sale or two make a small surge),
    none where it slowed, times the logarithm of its recent customers. One row, for
    :func:`standardised`."""
    lately = recent * (np.log(2.0) / half_life_days)
    usually = base * (np.log(2.0) / base_days)
    faster = np.maximum(np.log((lately + 0.05) / (usually + 0.05)), 0.0)
    return (np.log1p(recent) * faster)[np.newaxis, :].astype(np.float32)


def add_own_weights(total: np.ndarray, history: sparse.csr_matrix, weight: float) -> None:
    """``total += weight *`` each customer's history as a share of their heaviest offer (0
    to 1; negative weights count as none), in place (float32), on the history's entries
    alone: written on the matrix's arrays, where scipy's own arithmetic built five matrices
    per call (most of a millisecond for one customer at request time) and a dense share
    matrix cost a batch five passes."""
    history = summed(history)  # repeated entries add up, as in the matrix
    owners = row_owners(history)
    taken = np.maximum(history.data, 0).astype(np.float32, copy=False)
    heaviest = np.zeros(history.shape[0], dtype=np.float32)
    np.maximum.at(heaviest, owners, taken)
    shares = taken * (1.0 / np.maximum(heaviest, np.float32(1e-9)))[owners]
    total[owners, history.indices] += np.float32(weight) * shares


class Blend(Recommender):
    kind = "blend"
    config_class = BlendConfig
    search_space: ClassVar[dict[str, Param]] = {
        "ease_weight": Param("float", 0.0, 2.0),
        "als_weight": Param("float", 0.0, 2.0),
        "itemknn_weight": Param("float", 0.0, 2.0),
        "follows_weight": Param("float", 0.0, 2.0),
        "repeat": Param("float", 0.5, 64.0, log=True),
        "trend": Param("float", 0.0, 3.0),
        "trend_half_life_days": Param("float", 2.0, 60.0, log=True),
        "newness": Param("float", 0.0, 2.0),
        "newness_days": Param("float", 14.0, 180.0, log=True),
        "rising": Param("float", 0.0, 3.0),
        "rising_base_days": Param("float", 30.0, 180.0, log=True),
        "ease.l2": Param("float", 50.0, 3000.0, log=True),
        "als.factors": Param("int", 32, 192, log=True),
        "als.regularization": Param("float", 0.01, 20.0, log=True),
        "als.alpha": Param("float", 0.1, 20.0, log=True),
        "itemknn.neighbours": Param("int", 50, 1000, log=True),
        "follows.gap_days": Param("float", 1.0, 30.0, log=True),
        "follows.half_life_days": Param("float", 14.0, 365.0, log=True),
        "follows.damping": Param("float", 0.0, 1.0),
    }
    config: BlendConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.parts: dict[str, Recommender] = {}
        self.trending = np.zeros(0, dtype=np.float32)
        self.fresh = np.zeros(0, dtype=np.float32)
        self.rise = np.zeros(0, dtype=np.float32)

    def _components(self) -> dict[str, tuple[type[Recommender], ModelConfig, float]]:
        c = self.config
        return {"ease": (EASE, c.ease, c.ease_weight), "als": (ALS, c.als, c.als_weight),
                "itemknn": (ItemKNN, c.itemknn, c.itemknn_weight),
                "follows": (Follows, c.follows, c.follows_weight)}

    def _fit(self, data: TrainData) -> None:
        offers = data.matrix.shape[1]
        if self.config.ease_weight > 0 and not self.ease_fits(offers):
            log.warning("the blend leaves EASE out for %d offers (ease_max_offers=%s, this "
                        "machine's memory): item neighbours take its weight", offers,
                        self.config.ease_max_offers)
            c = self.config  # what is saved and logged says what was fitted
            self.config = c.model_copy(update={
                "ease_weight": 0.0, "itemknn_weight": c.itemknn_weight + c.ease_weight})
        self.parts = {name: cls(config).fit(data)
                      for name, (cls, config, weight) in self._components().items() if weight > 0}
        c = self.config
        if not self.parts and c.repeat == c.trend == c.newness == c.rising == 0:
            raise ValueError("a blend needs a component weight, repeat, trend, newness or "
                             "rising above 0")
        recent = data.recent_buyers(c.trend_half_life_days)
        self.trending = standardised(recent[np.newaxis, :])[0]
        selling = data.selling_days()
        dated = selling[np.isfinite(selling)]
        recorded = float(dated.max()) if len(dated) else 0.0  # how far back the data goes
        new = (selling < c.newness_days) & (recorded - selling >= c.newness_quiet_days)
        self.fresh = standardised((np.log1p(recent) * new)[np.newaxis, :])[0]
        self.rise = standardised(rising(recent, data.recent_buyers(c.rising_base_days),
                                        c.trend_half_life_days, c.rising_base_days))[0]

    def ease_fits(self, offers: int) -> bool:
        """Whether EASE is fitted on a catalogue of ``offers`` (see ``ease_max_offers``)."""
        limit = self.config.ease_max_offers
        if limit is not None:
            return offers <= min(limit, self.config.ease.max_items)
        return offers <= self.config.ease.max_items and ease_fits(offers)

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        total = np.zeros((len(rows), len(self.items)), dtype=np.float32)
        # the parts were fitted on the blend's data: its rows are their rows
        for name, (_, _, weight) in self._components().items():
            if name in self.parts:
                add_standardised(total, self.parts[name].raw_scores(rows, history), weight)
        if self.config.rising:  # as far as the offer suits the customer: 0 to 1
            suits = standardised(total)
            np.negative(suits, out=suits)
            with np.errstate(over="ignore"):  # far below the rest: the offer suits not at all
                np.exp(suits, out=suits)
            suits += 1.0
            total += np.divide(self.config.rising * self.rise, suits, out=suits)
        if self.config.repeat:
            add_own_weights(total, history, self.config.repeat)
        if self.config.trend:
            total += self.config.trend * self.trending
        if self.config.newness:
            total += self.config.newness * self.fresh
        return total

    def pair_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray | None:
        for part in self.parts.values():
            similarity = part.pair_similarity(targets, anchors)
            if similarity is not None:
                return similarity
        return None

    def _forget_rows(self, rows: np.ndarray) -> None:
        for part in self.parts.values():
            part.forget(part.customers.ids[rows])

    def _held_row(self, row: int) -> dict[str, Any]:
        customer = str(self.customers.names[row])
        return {"parts": {name: {k: v for k, v in part.held(customer).items() if k != "history"}
                          for name, part in self.parts.items()}}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"trending": self.trending, "fresh": self.fresh, "rise": self.rise}

    def save(self, path: Path) -> Path:
        super().save(path)
        for name, part in self.parts.items():
            part.save(path / name)
        return path

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        # a blend saved before the trend, newness or rising terms ranks as it did: no offer
        # is trending, new or rising
        none = np.zeros(len(self.items), dtype=np.float32)
        self.trending = arrays.get("trending", none)
        self.fresh = arrays.get("fresh", none)
        self.rise = arrays.get("rise", none)
        # a blend saved before 'follows' ranks as it did too: it has no such part
        self.parts = {name: Recommender.load(path / name) for name in self._components()
                      if (path / name / "model.json").exists()}
