"""Exploration: a share of the slots of a list go to offers the feedback log knows little
about, chosen by Thompson sampling, so that new and rarely shown offers get the impressions
that tell whether they work.

Each offer's click rate has a Beta posterior from the feedback log of the last
``window_days``: Beta(1 + clicks, 1 + impressions - clicks); draws come from the normal
distribution with its mean and variance. An offer with fewer than
``min_impressions`` impressions is uncertain. Each slot of a list explores with probability
``share``: its offer is replaced by the uncertain offer with the highest draw from its
posterior, among the ``candidates`` (20) uncertain offers ranking puts first of those that
every rule allows for this customer and the list does not hold yet, and that keep the list
within its per-category cap. Exploring among offers ranking rates well keeps the list
relevant and each explored offer's probability high enough for off-policy estimates.
Exploration never passes a rule or consent: it chooses only among offers that passed them.

Every offer served carries the probability that it is in the list: ``1 - share`` for an offer
ranking put there (exploration never picks ranking's offers, so only its own slot can lose
it), and ``1 - (1 - share x w)^k`` for an explored one, where ``w`` is how often its draw is
the highest of the whole pool (estimated from ``draws`` draws) and ``k`` the list's length:
any slot might have drawn it. The estimate leaves out that a slot's pool shrinks by what the
list holds already and by the category cap. The decision log keeps these probabilities for
off-policy estimates. The universal control group gets no exploration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

READ_SECONDS = 30.0  # how stale a worker's posteriors may be
DRAWS = 256
CANDIDATES = 20  # uncertain offers a list explores among: those ranking puts first


@dataclass(frozen=True)
class Exploration:
    share: float = 0.0  # of slots; 0: no exploration
    min_impressions: int = 200
    window_days: float = 30.0
    seed: int | None = None  # of the draws; None: fresh in every process
    candidates: int = CANDIDATES  # the uncertain offers ranking puts first, explored among

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 0.5:
            raise ValueError(f"the exploration share is 0 to 0.5 of slots, not {self.share}")
        if self.min_impressions < 1:
            raise ValueError("an offer is uncertain under at least one impression")
        if self.candidates < 1:
            raise ValueError("exploration needs at least one candidate offer")


NO_EXPLORATION = Exploration()


@dataclass(frozen=True)
class Posteriors:
    alpha: np.ndarray  # 1 + clicks, per offer
    beta: np.ndarray  # 1 + impressions without a click
    uncertain: np.ndarray  # fewer impressions than the minimum

    @classmethod
    def from_counts(cls, impressions: np.ndarray, clicks: np.ndarray, min_impressions: int
                    ) -> Posteriors:
        clicks = np.minimum(clicks, impressions)
        return cls(1.0 + clicks, 1.0 + impressions - clicks, impressions < min_impressions)

    def draw(self, offers: np.ndarray, rng: np.random.Generator, draws: int | None = None
             ) -> np.ndarray:
        """Click rates drawn for ``offers`` (``draws`` rows of them where given), from the
        normal distribution with each Beta posterior's mean and variance: a tenth of the
        cost of Beta draws, which the request's time cannot afford."""
        a, b = self.alpha[offers], self.beta[offers]
        total = a + b
        mean, sd = a / total, np.sqrt(a * b / (total**2 * (total + 1)))
        shape = len(offers) if draws is None else (draws, len(offers))
        return mean + sd * rng.standard_normal(shape)


@dataclass(frozen=True)
class Explored:
    items: np.ndarray  # the list after exploration
    probabilities: np.ndarray  # the chance each is in the list (1 - share: ranking's own)
    explored: np.ndarray  # bool: chosen by exploration


def explore(picked: np.ndarray, allowed: np.ndarray, posteriors: Posteriors,
            category: np.ndarray, max_per_category: int, share: float,
            rng: np.random.Generator, priority: np.ndarray | None = None,
            draws: int = DRAWS, among: int = CANDIDATES) -> Explored:
    """``picked`` (ranking's list, best first) with each slot explored with probability
    ``share``, as the module says; with ``priority``, among the ``among`` uncertain offers
    ranking puts first."""
    items = picked.copy()
    probabilities = np.full(len(items), 1.0 - share)
    explored = np.zeros(len(items), dtype=bool)
    if share <= 0 or not len(items):
        return Explored(items, np.ones(len(items)), explored)
    slots = np.flatnonzero(rng.random(len(items)) < share)
    if not len(slots):
        return Explored(items, probabilities, explored)
    pool = allowed & posteriors.uncertain
    pool[items] = False
    if priority is not None and pool.sum() > among:
        members = np.flatnonzero(pool)
        best = members[np.argpartition(-priority[members], among - 1)[:among]]
        pool = np.zeros_like(pool)
        pool[best] = True
    wins = _wins(np.flatnonzero(pool), posteriors, rng, draws)
    for slot in slots:
        others = np.delete(items, slot)
        counts = np.bincount(category[others], minlength=category.max() + 1)
        candidates = np.flatnonzero(pool & (counts[category] < max_per_category))
        if not len(candidates):
            probabilities[slot] = 1.0  # nothing to explore: ranking's offer stays for sure
            continue
        drawn = posteriors.draw(candidates, rng)
        chosen = candidates[int(drawn.argmax())]
        items[slot] = chosen
        # any of the list's slots might have drawn it: the chance it is in the list at all
        won = max(wins.get(int(chosen), 0.0), 0.5 / draws)  # never won: under 1 in draws
        probabilities[slot] = 1 - (1 - share * won) ** len(items)
        explored[slot] = True
        pool[chosen] = False
    return Explored(items, probabilities, explored)


def _wins(pool: np.ndarray, posteriors: Posteriors, rng: np.random.Generator, draws: int
          ) -> dict[int, float]:
    """How often each offer of the pool has the highest of ``draws`` draws."""
    if not len(pool):
        return {}
    drawn = posteriors.draw(pool, rng, draws)
    counts = np.bincount(drawn.argmax(axis=1), minlength=len(pool)) / draws
    return {int(offer): float(count) for offer, count in zip(pool, counts, strict=True)}


class PosteriorCache:
    """The posteriors of every offer from the store's feedback log, read at most every
    ``READ_SECONDS`` per worker."""

    def __init__(self, read: Callable[[datetime], tuple[np.ndarray, np.ndarray]],
                 exploration: Exploration) -> None:
        self.read, self.exploration = read, exploration
        self._held: tuple[float, Posteriors] | None = None
        self._lock = threading.Lock()

    def now(self, at: datetime) -> Posteriors:
        held = self._held
        if held is not None and time.monotonic() < held[0]:
            return held[1]
        with self._lock:
            impressions, clicks = self.read(at - timedelta(days=self.exploration.window_days))
            posteriors = Posteriors.from_counts(impressions, clicks,
                                                self.exploration.min_impressions)
            self._held = (time.monotonic() + READ_SECONDS, posteriors)
            return posteriors
