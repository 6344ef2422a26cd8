"""Responses to served offers (impressions, clicks, conversions, dismissals) as signals for
the next model and as response-rate reports."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.config import EventWeights
from features.history import until

ACTIONS = ("impression", "click", "conversion", "dismiss")


def feedback_weights(feedback: pd.DataFrame, now: pd.Timestamp, w: EventWeights
                     ) -> pd.DataFrame:
    """Net, time-decayed feedback weight per (customer, offer).

    Clicks and conversions are interest; a dismissal, and an offer shown at least
    ``w.ignored_after`` times without a click or conversion, are weak negatives.
    """
    feedback = until(feedback, now)
    if feedback.empty:
        return pd.DataFrame(columns=[C.customer, C.product, C.weight])
    age = (now - feedback[C.timestamp]).dt.total_seconds().to_numpy() / 86_400
    decay = np.power(0.5, np.maximum(age, 0.0) / w.half_life_days)
    action = feedback[C.action].to_numpy()
    frame = pd.DataFrame({
        C.customer: feedback[C.customer].to_numpy(),
        C.product: feedback[C.product].to_numpy(),
        C.weight: decay * np.select(
            [action == "click", action == "conversion", action == "dismiss"],
            [w.click, w.conversion, -w.dismiss], default=0.0),
        "impressions": action == "impression",
        "responses": np.isin(action, ["click", "conversion"]),
    })
    pairs = frame.groupby([C.customer, C.product], sort=False).agg(
        weight=(C.weight, "sum"), impressions=("impressions", "sum"),
        responses=("responses", "sum"))
    ignored = (pairs["impressions"] >= w.ignored_after) & (pairs["responses"] == 0)
    pairs.loc[ignored, C.weight] -= w.ignored
    return pairs[[C.weight]].reset_index()


def response_rates(feedback: pd.DataFrame, customer_features: pd.DataFrame | None = None
                   ) -> dict[str, pd.DataFrame]:
    """Impressions, responses and rates per offer, per channel and per customer segment."""
    counts = pd.get_dummies(feedback[C.action]).reindex(columns=list(ACTIONS), fill_value=0)
    frame = pd.concat([feedback[[C.product, C.channel, C.customer]], counts.astype(int)], axis=1)
    if customer_features is not None and len(customer_features):
        segment = customer_features.set_index(C.customer)["segment"]
        frame["segment"] = frame[C.customer].map(segment).fillna("unknown")
    else:
        frame["segment"] = "unknown"
    reports = {}
    for key in (C.product, C.channel, "segment"):
        table = frame.groupby(key)[list(ACTIONS)].sum()
        shown = table["impression"].replace(0, np.nan)
        table["click_rate"] = table["click"] / shown
        table["conversion_rate"] = table["conversion"] / shown
        table["dismiss_rate"] = table["dismiss"] / shown
        reports[key] = table.sort_values("impression", ascending=False).reset_index()
    return reports
