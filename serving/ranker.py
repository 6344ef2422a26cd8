"""A policed list: the best allowed offers by score with at most so many per category (the
top k of :mod:`training.ranking`, which the offline evaluation ranks with), and which rule
took each offer of the unfiltered top k."""

from __future__ import annotations

import numpy as np

from serving import policy
from serving.policy import RULES
from training.ranking import best_first


def top(scores: np.ndarray, allowed: np.ndarray, k: int, category: np.ndarray,
        max_per_category: int, taken: np.ndarray | None = None,
        then: np.ndarray | None = None) -> np.ndarray:
    """Best allowed offers by score (ties by ``then``), at most ``max_per_category`` per
    category (counting the offers already ``taken`` elsewhere)."""
    if k == 1:  # one offer: the best of the categories the taken offers leave room in
        if taken is not None and len(taken):
            full = np.bincount(category[taken], minlength=int(category.max()) + 1
                               ) >= max_per_category
            allowed = allowed & ~full[category]
        return _best(scores, np.flatnonzero(allowed), then)
    candidates = np.flatnonzero(allowed)
    if not len(candidates):
        return candidates
    width = min(len(candidates), max(4 * k * max_per_category, 64))
    while True:
        order = best_first(scores, candidates, width, then)
        picked = policy.diversify(order, category, max_per_category, k, taken)
        if len(picked) == k or width == len(candidates):
            return picked
        width = len(candidates)


def _best(scores: np.ndarray, candidates: np.ndarray, then: np.ndarray | None) -> np.ndarray:
    """:func:`best_first` of one offer without sorting: the highest score, ties by ``then``,
    then the first in offer order."""
    if not len(candidates):
        return candidates
    values = scores[candidates]
    tied = candidates[values == values.max()]
    if then is not None and len(tied) > 1:
        seconds = then[tied]
        tied = tied[seconds == seconds.max()]
    if not len(tied):  # a NaN: leave the order to the sort
        return best_first(scores, candidates, 1, then)
    return tied[:1]


def fill(fallbacks: np.ndarray, allowed: np.ndarray, picked: np.ndarray, room: int
         ) -> np.ndarray:
    """The policy's fallback offers, in its order, that every rule allows and the list does
    not hold yet: at most ``room`` of them."""
    if room <= 0 or not len(fallbacks):
        return fallbacks[:0]
    fresh = fallbacks[allowed[fallbacks] & ~np.isin(fallbacks, picked)]
    return fresh[:room]


def removed(scores: np.ndarray, masks: dict[str, np.ndarray], picked: np.ndarray, k: int,
            names: np.ndarray) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Which rule took each offer of the unfiltered top k (the first rule that did, in the
    order of ``masks``; "diversity" for an allowed offer the category cap left out)."""
    counts = dict.fromkeys(RULES, 0)
    offers = []
    served = set(picked.tolist())
    for item in best_first(scores, np.arange(len(scores)), k):
        rule = next((name for name, mask in masks.items() if not mask[item]),
                    None if item in served else "diversity")
        if rule is not None:
            counts[rule] += 1
            offers.append((str(names[item]), rule))
    return counts, offers
