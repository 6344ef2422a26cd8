"""Interaction weights per (customer, product) from events, as of a point in time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.columns import EventType as E
from features.config import EventWeights

INTERACTION_COLUMNS = [
    C.customer, C.product, C.weight, "purchases", C.quantity, "last_purchase", "last_event",
    "returned", "last_rating", "positive",
]


def event_contributions(events: pd.DataFrame, now: pd.Timestamp, w: EventWeights) -> np.ndarray:
    """Signed, time-decayed weight of every event (events after ``now`` must be removed)."""
    kind = events[C.event_type].to_numpy()
    quantity = events[C.quantity].to_numpy(dtype=float)
    units = np.log2(1.0 + quantity) if w.damp_quantity else quantity
    base = np.zeros(len(events))
    base[kind == E.purchase] = w.purchase * units[kind == E.purchase]
    base[kind == E.return_] = -w.return_ * w.purchase * units[kind == E.return_]
    base[kind == E.cart] = w.cart
    base[kind == E.wishlist] = w.wishlist
    base[kind == E.view] = w.view
    rated = kind == E.rating
    base[rated] = w.rating * (events[C.rating].to_numpy(dtype=float)[rated] - 2.5)
    age_days = (now - events[C.timestamp]).dt.total_seconds().to_numpy() / 86_400
    return base * np.power(0.5, np.maximum(age_days, 0.0) / w.half_life_days)


def interactions(events: pd.DataFrame, now: pd.Timestamp, w: EventWeights) -> pd.DataFrame:
    """One row per (customer, product) with the net weight and what the history says.

    A pair is a positive example only when its net weight is above zero, the customer never
    returned the product and their last rating of it (if any) is above 2.
    """
    events = events[events[C.timestamp] <= now]
    if events.empty:
        return pd.DataFrame(columns=INTERACTION_COLUMNS)
    cust_code, customers = pd.factorize(events[C.customer])
    prod_code, products = pd.factorize(events[C.product])
    pair = cust_code.astype(np.int64) * len(products) + prod_code
    kind = events[C.event_type].to_numpy()
    is_purchase = kind == E.purchase
    time = events[C.timestamp].to_numpy()
    frame = pd.DataFrame({
        "pair": pair,
        C.weight: event_contributions(events, now, w),
        "purchases": is_purchase.astype(np.int32),
        C.quantity: np.where(is_purchase, events[C.quantity].to_numpy(), 0),
        "last_purchase": np.where(is_purchase, time, np.datetime64("NaT")),
        "last_event": time,
        "returned": kind == E.return_,
    })
    grouped = frame.groupby("pair", sort=True).agg(
        weight=(C.weight, "sum"),
        purchases=("purchases", "sum"),
        quantity=(C.quantity, "sum"),
        last_purchase=("last_purchase", "max"),
        last_event=("last_event", "max"),
        returned=("returned", "any"),
    )
    ratings = pd.DataFrame({"pair": pair, "time": time, C.rating: events[C.rating].to_numpy()})
    ratings = ratings[kind == E.rating].sort_values("time", kind="stable")
    grouped["last_rating"] = ratings.groupby("pair")[C.rating].last()
    keys = grouped.index.to_numpy()
    grouped.insert(0, C.customer, customers[keys // len(products)])
    grouped.insert(1, C.product, products[keys % len(products)])
    grouped["positive"] = (
        (grouped[C.weight] > 0) & ~grouped["returned"] & ~(grouped["last_rating"] <= 2)
    )
    return grouped.reset_index(drop=True)[INTERACTION_COLUMNS]
