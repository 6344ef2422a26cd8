"""Propensity: the probability that a customer responds to an offer, from where the offer
stands in the customer's ranking, calibrated per channel at training time.

Two sources, the better one per channel:
- the feedback log: impressions by the position they were shown at against the clicks and
  conversions they got (isotonic: a lower position never responds better), where a channel
  has at least ``MIN_IMPRESSIONS`` impressions; offers with at least ``MIN_OFFER_IMPRESSIONS``
  get their own response rate relative to the channel's, smoothed towards it;
- the evaluation split otherwise: the share of customers who bought, within the test window,
  the offer the model (fitted before the cut-off) put at each rank: a purchase propensity.

The fitting needs scikit-learn; reading and applying a calibration needs numpy only, so the
serving engine imports this module without the training stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.columns import Columns as C

if TYPE_CHECKING:
    from training.evaluate import Split
    from training.models.base import Recommender

FILE = "calibration.json"  # in a model's serving context
DEPTH = 100  # ranks calibrated; further down the last rank's propensity holds
MIN_IMPRESSIONS = 500
MIN_OFFER_IMPRESSIONS = 30
PRIOR_IMPRESSIONS = 50.0  # how strongly an offer's own rate is pulled to its channel's
CUSTOMERS = 5_000  # test customers the split's curve is estimated from, at most


@dataclass(frozen=True)
class Curve:
    """Propensity by rank (0 = first), non-increasing, and where it came from."""

    by_rank: np.ndarray
    source: str  # "holdout" or "feedback"
    observations: int  # customers (holdout) or impressions (feedback) behind it

    @property
    def last_rank(self) -> int:
        """Ranks from here on share its propensity."""
        return len(self.by_rank) - 1

    def at(self, ranks: np.ndarray) -> np.ndarray:
        return self.by_rank[np.minimum(ranks, self.last_rank)]


@dataclass(frozen=True)
class Calibration:
    """The default curve, a curve per channel where feedback made one, and per channel the
    offers' own response rates relative to the channel's."""

    default: Curve
    channels: dict[str, Curve] = field(default_factory=dict)
    offers: dict[str, dict[str, float]] = field(default_factory=dict)

    def curve(self, channel: str) -> Curve:
        return self.channels.get(channel, self.default)

    def propensity(self, channel: str, ranks: np.ndarray, product_ids: np.ndarray
                   ) -> np.ndarray:
        values = self.curve(channel).at(ranks)
        own = self.offers.get(channel)
        if own:
            values = values * np.fromiter((own.get(p, 1.0) for p in product_ids), np.float64,
                                          count=len(product_ids))
        return np.minimum(values, 1.0)

    # --- files --------------------------------------------------------------------------

    def write(self, folder: Path) -> Path:
        def curve(c: Curve) -> dict[str, Any]:
            return {"by_rank": [round(float(v), 8) for v in c.by_rank], "source": c.source,
                    "observations": c.observations}

        body = {"default": curve(self.default),
                "channels": {name: curve(c) for name, c in self.channels.items()},
                "offers": self.offers}
        path = folder / FILE
        path.write_text(json.dumps(body, indent=1) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Calibration | None:
        """The calibration of a model's context, None for a model trained without one."""
        path = folder / FILE
        if not path.exists():
            return None
        body = json.loads(path.read_text())

        def curve(c: dict[str, Any]) -> Curve:
            values = np.asarray(c["by_rank"], dtype=np.float64)
            if not len(values) or not np.isfinite(values).all() or (values < 0).any():
                raise ValueError(f"{path}: a propensity curve must be finite and not negative")
            return Curve(values, str(c["source"]), int(c["observations"]))

        return cls(curve(body["default"]),
                   {name: curve(c) for name, c in body.get("channels", {}).items()},
                   {ch: {str(p): float(v) for p, v in rates.items()}
                    for ch, rates in body.get("offers", {}).items()})


UNCALIBRATED = Calibration(Curve(np.ones(1), "none", 0))  # models trained before calibration


def decreasing(rates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The isotonic (non-increasing) fit of per-rank rates."""
    from sklearn.isotonic import IsotonicRegression

    ranks = np.arange(len(rates), dtype=np.float64)
    keep = weights > 0
    if not keep.any():
        return np.zeros(len(rates))
    fit = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    fit.fit(ranks[keep], rates[keep], sample_weight=weights[keep])
    return np.asarray(fit.predict(ranks), dtype=np.float64)


def from_split(model: Recommender, split: Split, depth: int = DEPTH,
               customers: int = CUSTOMERS, seed: int = 0) -> Curve:
    """Per rank, the share of test customers who bought the offer the split's model put
    there (ranked as serving ranks, fallbacks included)."""
    from training.evaluate import ranked_scores
    from training.fallbacks import RegionalPopularity
    from training.ranking import top_k

    rows = split.test_customers
    if len(rows) > customers:
        rows = np.sort(np.random.default_rng(seed).choice(rows, customers, replace=False))
    depth = min(depth, len(split.data.items))
    fallbacks = RegionalPopularity(split.regions, split.bought_before)
    regions = split.regions[rows]
    hits = np.zeros(depth)
    for start in range(0, len(rows), 1024):
        part = rows[start:start + 1024]
        ids = split.data.customers.ids[part].to_numpy()
        scores = ranked_scores(model, ids, split.data.customer_features.iloc[part], fallbacks,
                               regions[start:start + 1024])
        best = top_k(scores, depth)
        truth = split.truth[part].toarray() > 0
        hits += np.take_along_axis(truth, best, axis=1).sum(axis=0)
    counts = np.full(depth, float(len(rows)))
    return Curve(decreasing(hits / len(rows), counts), "holdout", len(rows))


def from_feedback(feedback: pd.DataFrame, depth: int = DEPTH
                  ) -> tuple[dict[str, Curve], dict[str, dict[str, float]]]:
    """Per channel with enough impressions that say where they were shown: the response
    rate by position and the offers' own rates relative to the channel's."""
    if feedback.empty or C.position not in feedback or C.channel not in feedback:
        return {}, {}
    # a response answers the impression of the same answer (request), else of the same pair
    keys = [C.customer, C.product] + ([C.request_id] if C.request_id in feedback else [])
    shown = feedback[(feedback[C.action] == "impression") & feedback[C.position].notna()
                     & feedback[C.channel].notna()]
    answered = feedback[feedback[C.action].isin(["click", "conversion"])]
    responded = set(map(tuple, answered[keys].astype(str).to_numpy()))
    shown = shown.assign(responded=[tuple(k) in responded
                                    for k in shown[keys].astype(str).to_numpy()])
    curves, offers = {}, {}
    for channel, part in shown.groupby(C.channel):
        if len(part) < MIN_IMPRESSIONS:
            continue
        rank = np.minimum(part[C.position].to_numpy(np.int64) - 1, depth - 1).clip(0)
        count = np.bincount(rank, minlength=depth).astype(np.float64)
        hit = np.bincount(rank, weights=part["responded"].to_numpy(float), minlength=depth)
        rates = np.divide(hit, count, out=np.zeros(depth), where=count > 0)
        seen = int(np.flatnonzero(count).max()) + 1  # beyond the deepest shown, the last holds
        curve = decreasing(rates[:seen], count[:seen])
        curves[str(channel)] = Curve(curve, "feedback", len(part))
        base = float(part["responded"].mean())
        per = part.groupby(C.product)["responded"].agg(["sum", "count"])
        per = per[per["count"] >= MIN_OFFER_IMPRESSIONS]
        if base > 0 and len(per):
            smoothed = (per["sum"] + PRIOR_IMPRESSIONS * base) / (per["count"] + PRIOR_IMPRESSIONS)
            offers[str(channel)] = {str(p): round(float(v / base), 6)
                                    for p, v in smoothed.items()}
    return curves, offers


def calibrate(model: Recommender, split: Split, feedback: pd.DataFrame | None) -> Calibration:
    """The calibration logged with a model: the split's curve, the feedback's where it has
    enough."""
    channels, offers = from_feedback(feedback if feedback is not None else pd.DataFrame())
    return Calibration(from_split(model, split), channels, offers)
