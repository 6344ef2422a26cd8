"""Arbitration: after the rules, which eligible offer is worth most. Each offer's priority is

    propensity^a * value^b * weight * context weight

with ``a`` and ``b`` per channel from the offer policy. Propensity is the model's calibrated
probability of a response at the rank the model gives the offer (:mod:`training.calibration`),
value comes from the catalogue or the policy, weight from the policy's offer, category and
running campaign weights, and context weight from the policy's rules for the request's
channel and the customer's stage. Ties in priority keep the model's order, so with ``a=1``,
``b=0``, no weights and no offer's own response rate the order is the model's.

An :class:`Arbiter` is the policy compiled against one offer table; the engine swaps it whole
when the policy changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numba
import numpy as np

from features.columns import CHANNELS
from serving.offer_policy import NEUTRAL, ContextWeight, PolicyError, Versioned
from serving.policy import Offers
from serving.state import moment_ns
from training.calibration import UNCALIBRATED, Calibration

COMPONENTS = ("propensity", "value", "weight", "context_weight")


@dataclass(frozen=True)
class Priorities:
    """Priority and its components for every offer (zero where not a candidate)."""

    priority: np.ndarray
    components: dict[str, np.ndarray]

    def of(self, item: int) -> dict[str, float]:
        return {name: round(float(values[item]), 8) for name, values in self.components.items()}


class Arbiter:
    def __init__(self, versioned: Versioned, offers: Offers,
                 calibration: Calibration | None = None) -> None:
        policy = versioned.policy
        self.versioned, self.offers = versioned, offers
        self.calibration = calibration or UNCALIBRATED
        index = {str(pid): i for i, pid in enumerate(offers.ids)}
        self.index = index
        unknown = sorted(policy.offer_ids() - set(index))
        categories = {str(name): code for code, name in enumerate(offers.categories)}
        unknown_categories = sorted(policy.category_names() - set(categories))
        problems = []
        if unknown:
            problems.append(f"offers not in the served model's catalogue: {unknown[:10]}")
        if unknown_categories:
            problems.append(f"unknown categories: {unknown_categories[:10]}")
        if problems:
            raise PolicyError("; ".join(problems))

        def offer_mask(ids: list[str], names: list[str]) -> np.ndarray:
            mask = np.zeros(len(offers), dtype=bool)
            mask[[index[i] for i in ids]] = True
            for name in names:
                mask |= offers.category == categories[name]
            return mask

        def matching(rule: ContextWeight) -> np.ndarray:
            mask = np.ones(len(offers), dtype=bool)
            if rule.category:
                mask &= offers.category == categories[rule.category]
            if rule.offer_type:
                mask &= offers.offer_type == rule.offer_type
            return mask

        self.value = self._values(versioned, index)
        self.prior = {index[pid]: rule.propensity for pid, rule in policy.offers.items()
                      if rule.propensity is not None}
        self.weight = np.ones(len(offers))
        self.suppressed = np.zeros(len(offers), dtype=bool)
        for pid, rule in policy.offers.items():
            self.weight[index[pid]] *= rule.weight
            self.suppressed[index[pid]] |= rule.suppressed
        for name, category_rule in policy.categories.items():
            members = offers.category == categories[name]
            self.weight[members] *= category_rule.weight
            self.suppressed[members] |= category_rule.suppressed
        never, ever = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        self.campaigns = [(offer_mask(c.offers, c.categories), _ns(c.start, never),
                           _ns(c.end, ever), c.weight) for c in policy.campaigns]
        self.in_campaign = np.logical_or.reduce([m for m, *_ in self.campaigns]) \
            if self.campaigns else np.zeros(len(offers), dtype=bool)
        self.context = [(c.channel, c.stage, matching(c), c.weight) for c in policy.context]
        by_campaign = dict(zip([c.name for c in policy.campaigns],
                               [m for m, *_ in self.campaigns], strict=True))
        self.budgets = [(b, offer_mask(b.offers, []) | (by_campaign[b.campaign] if b.campaign
                                                          else False))
                        for b in policy.budgets]
        self.offer_budgets: dict[int, list[int]] = {}
        for number, (_, members) in enumerate(self.budgets):
            for item in np.flatnonzero(members):
                self.offer_budgets.setdefault(int(item), []).append(number)
        self.fallback_rank = np.array([index[i] for i in policy.fallbacks.rank], np.int64)
        self.fallback_blocks: dict[str, np.ndarray] = {
            str(block): np.array([index[i] for i in ids], np.int64)
            for block, ids in policy.fallbacks.blocks.items()}
        self.exponents = {channel: policy.exponents(channel) for channel in CHANNELS}
        self._beyond: dict[str, np.ndarray] = {}  # per channel: propensity past the curve

    @property
    def version(self) -> str:
        return self.versioned.version

    def _values(self, versioned: Versioned, index: dict[str, int]) -> np.ndarray:
        policy, offers = versioned.policy, self.offers
        if policy.value == "margin":
            value = offers.margin.copy()
        elif policy.value == "price_margin":
            value = offers.price * offers.margin
        elif policy.value == "price":
            value = offers.price.copy()
        else:
            value = np.ones(len(offers))
        value[~np.isfinite(value) | (value <= 0)] = policy.default_value
        for pid, rule in policy.offers.items():
            if rule.value is not None:
                value[index[pid]] = rule.value
        return value

    def allowed(self, now_ns: int) -> np.ndarray:
        """Offers the policy lets through at ``now_ns``: not suppressed, and a campaign's
        offers only while one of their campaigns runs."""
        allowed = ~self.suppressed
        if self.campaigns:
            running = np.zeros(len(self.offers), dtype=bool)
            for members, start, end, _ in self.campaigns:
                if start <= now_ns < end:
                    running |= members
            allowed &= ~self.in_campaign | running
        return allowed

    # --- budgets ------------------------------------------------------------------------

    def budget_keys(self, now: datetime) -> list[tuple[str, str]]:
        """Each budget's (name, period) at ``now``."""
        return [(budget.name, period_of(budget.period, now)) for budget, _ in self.budgets]

    def left(self, used: dict[tuple[str, str], int], now: datetime) -> list[int]:
        """What each budget has left in its period at ``now`` (``used``: from the store)."""
        return [max(budget.limit - used.get(key, 0), 0)
                for (budget, _), key in zip(self.budgets, self.budget_keys(now), strict=True)]

    def within_budgets(self, used: dict[tuple[str, str], int], now: datetime) -> np.ndarray:
        """Offers none of whose budgets is used up (``used``: from the store)."""
        allowed = np.ones(len(self.offers), dtype=bool)
        for (budget, members), key in zip(self.budgets, self.budget_keys(now), strict=True):
            if used.get(key, 0) >= budget.limit:
                allowed &= ~members
        return allowed

    def spending(self, items: np.ndarray, now: datetime, counts: str = "impressions"
                 ) -> list[list[tuple[str, str, int]]]:
        """Per offer, the (budget, period, limit) of its budgets that count ``counts``."""
        keys = self.budget_keys(now)
        return [[(self.budgets[b][0].name, keys[b][1], self.budgets[b][0].limit)
                 for b in self.offer_budgets.get(int(item), ())
                 if self.budgets[b][0].counts == counts] for item in items]

    def conversions(self, rows: list[dict[str, object]]) -> list[tuple[str, str]]:
        """The (budget, period) that each conversion among feedback ``rows`` counts in."""
        keys = []
        for row in rows:
            if row.get("action") != "conversion":
                continue
            item = self.index.get(str(row.get("product_id")))
            at = row.get("timestamp")
            if item is None or not isinstance(at, datetime):
                continue
            keys += [(name, period) for offer in self.spending(np.array([item]), at,
                                                                 "conversions")
                     for name, period, _ in offer]
        return keys

    def priorities(self, scores: np.ndarray, candidates: np.ndarray, channel: str, stage: str,
                   now_ns: int) -> Priorities:
        """The priority of each candidate (a boolean mask over the offers) for one request."""
        at_rank = self._propensity(channel, scores[np.newaxis])[0]
        weight, context = self._weight(now_ns), self._context(channel, stage)
        priority = self._product(channel, at_rank, self.value, weight, context)
        priority[~candidates] = 0.0
        return Priorities(priority,
                          {"propensity": np.where(candidates, at_rank, 0.0),
                           "value": self.value, "weight": weight, "context_weight": context})

    def priority_rows(self, scores: np.ndarray, candidates: np.ndarray, channel: str,
                      stages: list[str], now_ns: int) -> np.ndarray:
        """:meth:`priorities` of many customers at once: ``scores`` and ``candidates`` have a
        row per customer, ``stages`` their lifecycle stages; the priority matrix alone, the
        same bits as :meth:`priorities` gives each row. Past the curve's last rank an offer's
        priority is the same in every row (per stage), so it is worked out once per offer,
        and only the offers above that rank one by one."""
        by_stage = {stage: self._context(channel, stage) for stage in set(stages)}
        contexts = list(by_stage.values())
        context = (contexts[0] if all(np.array_equal(c, contexts[0]) for c in contexts)
                   else np.stack([by_stage[stage] for stage in stages])) if contexts \
            else np.ones(len(self.offers))  # one row for all where the stages weigh alike
        weight = self._weight(now_ns)
        beyond = self._beyond_cap(channel)
        past_cap = self._product(channel, beyond, self.value, weight, 1.0)
        priority = np.where(candidates, past_cap * context, 0.0)
        rows, columns, propensity = self._above_cap(channel, scores)
        above = self._product(channel, propensity, self.value[columns], weight[columns],
                              context[rows, columns] if context.ndim == 2 else context[columns])
        priority[rows, columns] = np.where(candidates[rows, columns], above, 0.0)
        return priority

    def _product(self, channel: str, at_rank: np.ndarray, value: np.ndarray,
                 weight: np.ndarray, context: np.ndarray | float) -> np.ndarray:
        """propensity^a * value^b * weight * context, multiplied in the order of the
        formula (the same bits for an offer however many are multiplied at once)."""
        exponents = self.exponents[channel]
        priority = at_rank ** exponents.a * value ** exponents.b
        priority *= weight
        priority *= context
        return priority

    def _weight(self, now_ns: int) -> np.ndarray:
        """Each offer's weight with the campaigns running at ``now_ns``."""
        weight = self.weight.copy()
        for members, start, end, campaign_weight in self.campaigns:
            if start <= now_ns < end:
                weight[members] *= campaign_weight
        return weight

    def _propensity(self, channel: str, scores: np.ndarray) -> np.ndarray:
        """Calibrated propensity at the rank each offer has in each row's scores, the
        policy's prior for offers without a response rate of their own."""
        propensity = np.tile(self._beyond_cap(channel), (len(scores), 1))
        rows, columns, above = self._above_cap(channel, scores)
        propensity[rows, columns] = above
        return propensity

    def _beyond_cap(self, channel: str) -> np.ndarray:
        """Each offer's propensity past the curve's last rank (every offer there has the last
        rank's), or its prior: the same for every request of the channel, kept."""
        beyond = self._beyond.get(channel)
        if beyond is None:
            cap = self.calibration.curve(channel).last_rank
            beyond = self.calibration.propensity(channel, np.full(len(self.offers), cap),
                                                 self.offers.ids)
            priored = self._priored(channel)
            beyond[priored] = [self.prior[i] for i in priored]
            self._beyond[channel] = beyond
        return beyond

    def _priored(self, channel: str) -> list[int]:
        """The offers whose propensity is the policy's prior: those with a prior and no
        response rate of their own in the channel."""
        own = self.calibration.offers.get(channel, {})
        return [item for item in self.prior if str(self.offers.ids[item]) not in own]

    def _above_cap(self, channel: str, scores: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and propensity of each offer above the curve's last rank in its row,
        looked up one by one (offers with a prior left out: theirs is the same at any
        rank)."""
        rows, columns, ranks = above_cap(scores, self.calibration.curve(channel).last_rank)
        if self.prior:
            keep = ~np.isin(columns, self._priored(channel))
            rows, columns, ranks = rows[keep], columns[keep], ranks[keep]
        return rows, columns, self.calibration.propensity(channel, ranks,
                                                          self.offers.ids[columns])

    def _context(self, channel: str, stage: str) -> np.ndarray:
        context = np.ones(len(self.offers))
        for rule_channel, rule_stage, members, rule_weight in self.context:
            if rule_channel in (None, channel) and rule_stage in (None, stage):
                context[members] *= rule_weight
        return context


def higher(scores: np.ndarray, cap: int | None = None) -> np.ndarray:
    """Per offer, how many offers score higher: its rank in the model's ranking of every
    offer, ties sharing the best rank; at most ``cap`` (a propensity curve's last rank, past
    which every rank is alike)."""
    return higher_rows(scores[np.newaxis], cap)[0]


def higher_rows(scores: np.ndarray, cap: int | None = None) -> np.ndarray:
    """:func:`higher` of each row."""
    rows, n = scores.shape
    counts = np.full((rows, n), n if cap is None else max(min(cap, n), 0), dtype=np.int64)
    row, column, above = above_cap(scores, cap)
    counts[row, column] = above
    return counts


def above_cap(scores: np.ndarray, cap: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The offers of each row that fewer than ``cap`` offers score higher (all where None),
    as row, column and how many score higher, each offer's count where its tie group starts.
    A row's best are found in a compiled loop (:func:`_best_of_rows`); a row with a NaN
    score goes through numpy's partition and sort, whose order puts NaN where it does."""
    n = scores.shape[1]
    if cap is not None and cap <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    width = n if cap is None or cap >= n else cap
    row, column, counts, unordered = _best_of_rows(np.ascontiguousarray(scores, np.float64),
                                                   width)
    if unordered.any():
        left = np.flatnonzero(unordered)
        keep = ~unordered[row]
        other_row, other_column, other_counts = _sorted_above_cap(scores[left], width)
        row = np.concatenate([row[keep], left[other_row]])
        column = np.concatenate([column[keep], other_column])
        counts = np.concatenate([counts[keep], other_counts])
    return row, column, counts


def _sorted_above_cap(scores: np.ndarray, width: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`above_cap` by numpy's partition and sort: the ``width`` best of each row
    sorted, each offer's count where its tie group starts, and any other offer tied with the
    last of them counted as it is."""
    rows, n = scores.shape
    chosen = (np.argpartition(scores, n - width, axis=1)[:, n - width:] if width < n
              else np.broadcast_to(np.arange(n), (rows, n)))
    values = np.take_along_axis(scores, chosen, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    chosen = np.take_along_axis(chosen, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    place = np.broadcast_to(np.arange(width), (rows, width))
    new_value = np.ones((rows, width), dtype=bool)
    np.not_equal(values[:, 1:], values[:, :-1], out=new_value[:, 1:])
    above = np.maximum.accumulate(np.where(new_value, place, 0), axis=1)
    row = np.repeat(np.arange(rows), width)
    column, counts = chosen.ravel(), above.ravel()
    if width < n:  # offers tied with a row's last chosen one that the partition left out
        last = values[:, -1:]
        left_out = np.flatnonzero(np.count_nonzero(scores == last, axis=1)
                                  > np.count_nonzero(values == last, axis=1))
        for r in left_out.tolist():
            tied = np.setdiff1d(np.flatnonzero(scores[r] == last[r]), chosen[r])
            row = np.concatenate([row, np.full(len(tied), r)])
            column = np.concatenate([column, tied])
            counts = np.concatenate([counts, np.full(len(tied), above[r, -1])])
    return row, column, counts


SAMPLED = 256  # a row's scores sampled to guess how high its best ``width`` reach


@numba.njit(nogil=True, cache=True)
def _best_of_rows(scores, width):
    """Row, column and count of each offer that fewer than ``width`` offers of its row score
    higher, and which rows hold a NaN (their entries are left for numpy to redo).

    The best few of a strided sample give a score that about two and a half times ``width``
    offers of the row reach; one pass keeps those offers (the whole row where it kept too
    few), a partition finds the ``width``-th score among them, and only the offers at or
    above it are sorted. 4,053 offers, the best 99: 23 us a row of a batch where numpy's
    partition and sort took 27, and 15 us for a request's lone row where they took 55."""
    rows, n = scores.shape
    unordered = np.zeros(rows, dtype=np.bool_)
    size = rows * width
    out_row = np.empty(size, dtype=np.int64)
    out_column = np.empty(size, dtype=np.int64)
    out_count = np.empty(size, dtype=np.int64)
    kept = np.empty(n, dtype=np.int64)
    step = max(n // SAMPLED, 1)
    sampled = (n + step - 1) // step
    # the sample's place whose score about 2.5 * width offers of the row reach
    guess = min(sampled, (5 * width * sampled) // (2 * n) + 1)
    best = np.empty(guess, dtype=np.float64)  # the sample's best, lowest first
    filled = 0
    for r in range(rows):
        values = scores[r]
        m = 0
        if width < n and guess < sampled:
            best[:] = -np.inf
            for i in range(0, n, step):
                value = values[i]
                if value > best[0]:
                    j = 1
                    while j < guess and best[j] < value:
                        best[j - 1] = best[j]
                        j += 1
                    best[j - 1] = value
            floor = best[0]
            for i in range(n):
                value = values[i]
                if value >= floor:
                    kept[m] = i
                    m += 1
                elif value != value:
                    unordered[r] = True
            if unordered[r]:
                continue
        if m < width:  # the guess kept too few: every offer
            for i in range(n):
                if values[i] != values[i]:
                    unordered[r] = True
                kept[i] = i
            m = n
            if unordered[r]:
                continue
        found = values[kept[:m]]
        last = np.partition(found, m - width)[m - width] if m > width else found.min()
        top = kept[:m][found >= last]
        order = np.argsort(-values[top])
        if filled + len(top) > size:  # ties past the last place: room for them
            size = max(2 * size, filled + len(top))
            out_row = _grown(out_row, size)
            out_column = _grown(out_column, size)
            out_count = _grown(out_count, size)
        start = 0
        for place in range(len(top)):
            offer = top[order[place]]
            if place and values[offer] != values[top[order[place - 1]]]:
                start = place
            out_row[filled] = r
            out_column[filled] = offer
            out_count[filled] = start
            filled += 1
    return out_row[:filled], out_column[:filled], out_count[:filled], unordered


@numba.njit(nogil=True, cache=True)
def _grown(values, size):
    grown = np.empty(size, dtype=values.dtype)
    grown[:len(values)] = values
    return grown


def period_of(period: str, now: datetime) -> str:
    """The period a moment counts in: its UTC day, its ISO week, or the total."""
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    return "total"


def neutral(offers: Offers, calibration: Calibration | None = None) -> Arbiter:
    """The arbiter of no policy: relevance alone."""
    return Arbiter(NEUTRAL, offers, calibration)


def _ns(moment: datetime | None, default: int) -> int:
    """A policy's moment (UTC where it names no offset) in nanoseconds."""
    return default if moment is None else moment_ns(moment)
