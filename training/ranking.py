"""The one top k: offers best first by score, ties in offer order. Offline evaluation ranks
with it and serving picks its lists with it, so what is measured is what is served."""

from __future__ import annotations

import numpy as np


def best_first(scores: np.ndarray, candidates: np.ndarray, n: int,
               then: np.ndarray | None = None) -> np.ndarray:
    """The ``n`` best ``candidates`` by score, best first, ties by ``then`` (a second score,
    higher first) and then in offer order (the n are found by partitions, :func:`_leading`,
    and only they are sorted)."""
    if n < len(candidates):
        candidates = _leading(candidates, n, scores, then)
    keys = (candidates, -scores[candidates]) if then is None else \
        (candidates, -then[candidates], -scores[candidates])
    return candidates[np.lexsort(keys)][:n]


def _leading(candidates: np.ndarray, n: int, scores: np.ndarray, then: np.ndarray | None
             ) -> np.ndarray:
    """The ``n`` best candidates in no particular order (and those tied with the n-th where
    its score is NaN). Offers tied with the n-th best are narrowed by ``then`` and then by
    offer order, each a partition, so that a list where most offers tie (a priority of
    zero) sorts about ``n`` of them rather than all."""
    values = scores[candidates]
    kth = values[np.argpartition(-values, n - 1)[n - 1]]
    if np.isnan(kth):
        return candidates
    ahead, tied = candidates[values > kth], candidates[values == kth]
    room = n - len(ahead)
    if len(tied) > room:
        tied = (_leading(tied, room, then, None) if then is not None
                else np.partition(tied, room - 1)[:room])
    return np.concatenate([ahead, tied])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of a customers x offers matrix, the ``k`` best offers, best first, ties in
    offer order: row by row what :func:`best_first` picks from every offer."""
    n, m = scores.shape
    k = min(k, m)
    if k == 0 or n == 0:
        return np.zeros((n, k), dtype=np.int64)
    kth = np.take_along_axis(scores, np.argpartition(-scores, k - 1, axis=1)[:, k - 1:k], 1)
    above = scores > kth
    tied = scores == kth
    # of the offers tied with the k-th best, the first ones in offer order fill the rest
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    picked = np.nonzero(chosen)[1].reshape(n, k)  # in offer order within each row
    order = np.argsort(-np.take_along_axis(scores, picked, axis=1), axis=1, kind="stable")
    return np.take_along_axis(picked, order, axis=1)
