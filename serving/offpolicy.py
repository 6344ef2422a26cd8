"""Off-policy estimates: what a challenger's lists would have earned, from the lists the
service logged, before the challenger serves anyone.

The logged lists carry, per offer, the probability with which the serving policy chose it
(:mod:`serving.explore`: ``1 - share`` for ranking's own offers, small ones for explored
offers, 1 without exploration). The challenger ranks the same customer at the same moment;
an offer of its list that the logged list showed is credited with what the customer did with
it, weighed by 1 / that probability (inverse propensity scoring). Per list::

    value = sum over offers shown and in the challenger's list of reward / probability
    weight = sum over the same offers of 1 / probability

IPS is the mean value over lists; its self-normalised form (SNIPS) is
``mean(value) / mean(weight) x size`` (size: offers per challenger's list), the same
estimate rescaled by how much of the challenger's list the logged lists covered, which trades
a little bias for much less variance. Intervals are 95% bootstrap intervals over lists.

Plain IPS assumes an offer's response does not depend on its position, while customers
look at the first places more. Where the log holds explored offers, the position-corrected
IPS weighs each credited outcome also by how much more (or less) its place in the
challenger's list is looked at than its place in the logged list: ``(p / q)^g`` for logged
place ``p`` and challenger's place ``q``. Exploration puts its offers into slots at random,
so the click rate of explored offers by slot measures ``g`` apart from relevance (a fit of
``log rate = c - g log p``; without explored clicks at three places or more, no correction).

A challenger's offer that the serving policy could never show (probability 0) cannot be
credited, so without exploration the estimate is only about the overlap of the two
policies. ``support`` says what share of the challenger's offers the logged lists showed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Columns as C

LEVEL = 0.95
RESAMPLES = 1000
REWARDS = ("clicked", "converted")


@dataclass(frozen=True)
class Estimate:
    metric: str  # per list: clicks or conversions
    logged: float  # what the serving policy's lists earned
    ips: float
    ips_low: float
    ips_high: float
    snips: float
    snips_low: float
    snips_high: float
    credited: int  # outcomes on offers the challenger shares with the logged lists
    position_ips: float | None = None  # corrected for the places: None without a curve
    position_ips_low: float | None = None
    position_ips_high: float | None = None


def estimate(logged: pd.DataFrame, challenger: pd.DataFrame, seed: int = 0,
             resamples: int = RESAMPLES) -> tuple[list[Estimate], dict[str, Any]]:
    """IPS and SNIPS of clicks and conversions per list.

    ``logged``: one row per offer shown (``request_id``, product, ``probability``,
    ``clicked``, ``converted``); ``challenger``: the challenger's lists for the same
    requests (``request_id``, product). Lists the challenger did not rank are left out.
    Returns the estimates and what they rest on: lists, support, the largest weight."""
    if not (logged["probability"] > 0).all():
        raise ValueError("a logged offer with probability 0 cannot have been shown: the "
                         "decision log is damaged")
    ranked = logged[logged["request_id"].isin(challenger["request_id"])]
    lists = pd.Index(ranked["request_id"].unique())
    if not len(lists):
        raise ValueError("no logged list to estimate from: the challenger ranked none of "
                         "the logged requests (do they name customers it knows?)")
    target = challenger.drop_duplicates(["request_id", C.product])
    if "position" not in target:
        target = target.assign(position=target.groupby("request_id").cumcount() + 1)
    shared = ranked.merge(target[["request_id", C.product, "position"]],
                          on=["request_id", C.product], suffixes=("", "_challenger"))
    inverse = 1.0 / shared["probability"].to_numpy(float)
    decay = position_decay(ranked)
    placed = None if decay is None else inverse * (
        shared["position"].to_numpy(float) / shared["position_challenger"].to_numpy(float)
    ) ** decay
    position = lists.get_indexer(shared["request_id"])
    weight = np.bincount(position, weights=inverse, minlength=len(lists))
    proposed = challenger[challenger["request_id"].isin(lists)].groupby("request_id").size()
    size = float(proposed.mean())  # offers per challenger's list: SNIPS's scale
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(lists), size=(resamples, len(lists)))
    estimates = []
    for reward in REWARDS:
        value = np.bincount(position, weights=inverse * shared[reward].to_numpy(float),
                            minlength=len(lists))
        earned = ranked.groupby("request_id")[reward].sum().reindex(lists).to_numpy(float)
        ips_b = value[draws].mean(axis=1)
        snips_b = ips_b / np.maximum(weight[draws].mean(axis=1), 1e-12) * size
        tails = [(1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100]
        ips_low, ips_high = np.percentile(ips_b, tails)
        snips_low, snips_high = np.percentile(snips_b, tails)
        corrected: tuple[float | None, ...] = (None, None, None)
        if placed is not None:
            moved = np.bincount(position, weights=placed * shared[reward].to_numpy(float),
                                minlength=len(lists))
            moved_low, moved_high = np.percentile(moved[draws].mean(axis=1), tails)
            corrected = (float(moved.mean()), float(moved_low), float(moved_high))
        estimates.append(Estimate(
            f"{reward}_per_list", float(earned.mean()), float(value.mean()), float(ips_low),
            float(ips_high), float(value.mean() / max(weight.mean(), 1e-12) * size),
            float(snips_low), float(snips_high), int(shared[reward].sum()), *corrected))
    basis = {"lists": len(lists), "offers_shown": len(ranked), "position_decay": decay,
             "support": float(len(shared) / max(int(proposed.sum()), 1)),
             "largest_weight": float(inverse.max()) if len(inverse) else None,
             "left_out": int(logged["request_id"].nunique() - len(lists))}
    return estimates, basis


def position_decay(logged: pd.DataFrame) -> float | None:
    """``g`` of a click rate falling as ``position^-g``, fitted to the explored offers of the
    log (weighted by their impressions); None where fewer than three places have clicks."""
    if "explored" not in logged or "position" not in logged:
        return None
    explored = logged[logged["explored"].astype(bool)]
    by_place = explored.groupby("position")["clicked"].agg(["sum", "size"])
    by_place = by_place[by_place["sum"] > 0]
    if len(by_place) < 3:
        return None
    x = np.log(by_place.index.to_numpy(float))
    y = np.log(by_place["sum"].to_numpy(float) / by_place["size"].to_numpy(float))
    slope = np.polyfit(x, y, 1, w=np.sqrt(by_place["size"].to_numpy(float)))[0]
    return float(max(-slope, 0.0))
