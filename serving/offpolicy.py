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

What it assumes, and where it is wrong: an offer's response does not depend on its position
(the challenger may place a shown offer higher or lower); a challenger's offer that the
serving policy could never show (probability 0) cannot be credited, so without exploration
the estimate is only about the overlap of the two policies. ``support`` says what share of
the challenger's offers the logged lists showed.
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
    shared = ranked.merge(challenger[["request_id", C.product]].drop_duplicates(),
                          on=["request_id", C.product])
    inverse = 1.0 / shared["probability"].to_numpy(float)
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
        estimates.append(Estimate(
            f"{reward}_per_list", float(earned.mean()), float(value.mean()), float(ips_low),
            float(ips_high), float(value.mean() / max(weight.mean(), 1e-12) * size),
            float(snips_low), float(snips_high), int(shared[reward].sum())))
    basis = {"lists": len(lists), "offers_shown": len(ranked),
             "support": float(len(shared) / max(int(proposed.sum()), 1)),
             "largest_weight": float(inverse.max()) if len(inverse) else None,
             "left_out": int(logged["request_id"].nunique() - len(lists))}
    return estimates, basis
