"""Interaction weights per (customer, product) from events, as of a point in time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.columns import EventType as E
from features.config import EventWeights
from features.feedback import feedback_weights
from features.history import kind_masks, until

INTERACTION_COLUMNS = [
    C.customer, C.product, C.weight, "purchases", C.quantity, "last_purchase", "last_event",
    "returned", "last_rating", "positive",
]
_NAT = np.iinfo(np.int64).min
LOW_RATING = 2  # a last rating at or below this makes a pair negative, however bought


def event_contributions(
    events: pd.DataFrame, now: pd.Timestamp, w: EventWeights,
    kinds: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Signed, time-decayed weight of every event (events after ``now`` must be removed)."""
    kinds = kinds or kind_masks(events[C.event_type])
    return contributions(kinds, events[C.quantity].to_numpy(dtype=float),
                         events[C.rating].to_numpy(dtype=float),
                         events[C.timestamp].to_numpy("datetime64[ns]").view(np.int64),
                         now.as_unit("ns").value, w)


def contributions(kinds: dict[str, np.ndarray], quantity: np.ndarray, rating: np.ndarray,
                  times_ns: np.ndarray, now_ns: int, w: EventWeights) -> np.ndarray:
    """:func:`event_contributions` over plain arrays: a mask per event type, quantities,
    ratings (NaN where none) and times in int64 nanoseconds. Serving weighs live events
    with this, the features job the history."""
    units = np.log2(1.0 + quantity) if w.damp_quantity else quantity
    out = np.zeros(len(quantity))
    out[kinds[E.purchase]] = w.purchase * units[kinds[E.purchase]]
    out[kinds[E.return_]] = -w.return_ * w.purchase * units[kinds[E.return_]]
    del units
    out[kinds[E.cart]] = w.cart
    out[kinds[E.wishlist]] = w.wishlist
    out[kinds[E.view]] = w.view
    rated = kinds[E.rating]
    out[rated] = w.rating * (rating[rated] - 2.5)
    age_days = times_ns.astype(float)
    age_days -= now_ns
    age_days /= -86_400e9
    np.maximum(age_days, 0.0, out=age_days)
    age_days /= -w.half_life_days
    out *= np.exp2(age_days, out=age_days)
    return out


def interactions(events: pd.DataFrame, now: pd.Timestamp, w: EventWeights,
                 feedback: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (customer, product) with the net weight and what the history says.

    Responses to served offers (``feedback``) add to the weight. A pair is a positive
    example only when its net weight is above zero, the customer never returned the product
    and their last rating of it (if any) is above 2.
    """
    table = _event_interactions(until(events, now), now, w)
    if feedback is None or feedback.empty:
        return table
    return _with_feedback(table, feedback_weights(feedback, now, w))


def is_positive(pairs: pd.DataFrame) -> pd.Series:
    """Net weight above zero, never returned, and no last rating of 2 or below."""
    return (pairs[C.weight] > 0) & ~pairs["returned"] & ~(pairs["last_rating"] <= LOW_RATING)


def _with_feedback(table: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    if responses.empty:
        return table
    key = [C.customer, C.product]
    merged = table.merge(responses.rename(columns={C.weight: "response"}), on=key, how="outer")
    merged[C.weight] = merged[C.weight].fillna(0.0) + merged["response"].fillna(0.0)
    merged["purchases"] = merged["purchases"].fillna(0).astype(np.int32)
    merged[C.quantity] = merged[C.quantity].fillna(0).astype(np.int64)
    merged["returned"] = merged["returned"].astype("boolean").fillna(False).astype(bool)
    merged["positive"] = is_positive(merged)
    return merged[INTERACTION_COLUMNS]


def _event_interactions(events: pd.DataFrame, now: pd.Timestamp, w: EventWeights
                        ) -> pd.DataFrame:
    if events.empty:
        return pd.DataFrame(columns=INTERACTION_COLUMNS)
    cust_code, customers = pd.factorize(events[C.customer])
    prod_code, products = pd.factorize(events[C.product])
    pair = cust_code.astype(np.int64) * len(products) + prod_code
    del cust_code, prod_code
    # sort once by (pair, time), then reduce each run of one pair (lean on memory for 10^7
    # rows; runs are in time order, which the last rating needs)
    all_times = events[C.timestamp].to_numpy("datetime64[ns]").view(np.int64)
    order = np.lexsort((all_times, pair))
    time = all_times[order]
    del all_times
    pair = pair[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    keys = pair[starts]
    del pair
    kinds = kind_masks(events[C.event_type])
    weight = event_contributions(events, now, w, kinds)[order]
    is_purchase = kinds[E.purchase][order]
    is_return = kinds[E.return_][order]
    is_rating = kinds[E.rating][order]
    del kinds
    result = pd.DataFrame({
        C.customer: customers[keys // len(products)],
        C.product: products[keys % len(products)],
        C.weight: np.add.reduceat(weight, starts),
        "purchases": np.add.reduceat(is_purchase.astype(np.int32), starts),
        C.quantity: np.add.reduceat(
            np.where(is_purchase, events[C.quantity].to_numpy()[order], 0), starts
        ),
        "last_purchase": _as_time(np.maximum.reduceat(np.where(is_purchase, time, _NAT), starts)),
        "last_event": _as_time(np.maximum.reduceat(time, starts)),
        "returned": np.logical_or.reduceat(is_return, starts),
    })
    result["last_rating"] = _last_rating(events[C.rating].to_numpy()[order], is_rating, starts)
    result["positive"] = is_positive(result)
    return result[INTERACTION_COLUMNS]


def _as_time(values: np.ndarray) -> np.ndarray:
    return values.view("datetime64[ns]")  # the int64 minimum reads back as NaT


def _last_rating(rating: np.ndarray, is_rating: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The latest rating within each run of a pair (runs are in time order)."""
    rated = np.flatnonzero(is_rating)
    out = np.full(len(starts), np.nan)
    if len(rated):
        run = np.searchsorted(starts, rated, side="right") - 1
        last = np.r_[run[1:] != run[:-1], True]
        out[run[last]] = rating[rated[last]]
    return out
