"""Customer state as a pure function of (history, now): training and serving share it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.columns import EventType as E
from features.columns import Stage
from features.config import LifecycleConfig

AGE_BANDS = ((0, "under 25"), (25, "25-34"), (35, "35-44"), (45, "45-54"), (55, "55-64"),
             (65, "65+"))
STATE_COLUMNS = [
    C.customer, "lifecycle_stage", "first_purchase", "last_purchase", "orders", "purchases",
    "value", "usual_gap_days", "days_since_purchase", "last_event", "last_visit_items",
    "returned_items", C.region, "age_band", C.signup_date,
]
VISIT_EVENTS = (E.view, E.cart, E.wishlist, E.purchase)


def lifecycle_stage(
    first_purchase: pd.Series,
    last_purchase: pd.Series,
    usual_gap_days: pd.Series,
    now: pd.Timestamp,
    cfg: LifecycleConfig,
) -> pd.Series:
    """Stage per customer; the first rule that matches wins.

    prospect: never bought. new: first purchase at most ``new_days`` ago. lapsed: last
    purchase more than ``lapsed_days`` ago. at_risk: last purchase longer ago than
    ``at_risk_days`` or than ``at_risk_gap_factor`` times the customer's usual gap. active:
    everyone else.
    """
    since_first = (now - first_purchase).dt.total_seconds() / 86_400
    since_last = (now - last_purchase).dt.total_seconds() / 86_400
    own_limit = usual_gap_days * cfg.at_risk_gap_factor
    risk_limit = np.fmin(own_limit.to_numpy(dtype=float), cfg.at_risk_days)
    stage = np.select(
        [
            first_purchase.isna().to_numpy(),
            (since_first <= cfg.new_days).to_numpy(),
            (since_last > cfg.lapsed_days).to_numpy(),
            (since_last > risk_limit).to_numpy(),
        ],
        [Stage.prospect, Stage.new, Stage.lapsed, Stage.at_risk],
        default=Stage.active,
    )
    return pd.Series(stage, index=first_purchase.index, name="lifecycle_stage")


def age_band(birth_year: pd.Series, now: pd.Timestamp) -> pd.Series:
    age = now.year - pd.to_numeric(birth_year, errors="coerce")
    edges = [lower for lower, _ in AGE_BANDS] + [200]
    bands = pd.cut(age, bins=edges, right=False, labels=[name for _, name in AGE_BANDS])
    return bands.astype(object).where(age.notna() & (age >= 0), "unknown")


def customer_state(
    events: pd.DataFrame,
    customers: pd.DataFrame,
    products: pd.DataFrame,
    now: pd.Timestamp,
    cfg: LifecycleConfig,
) -> pd.DataFrame:
    """One row per customer known from events or the customer table, as of ``now``.

    Events after ``now`` are ignored, so a state computed for a past cut-off never sees
    the future.
    """
    events = events[events[C.timestamp] <= now]
    ids = pd.Index(pd.concat([customers[C.customer], events[C.customer]]).unique(),
                   name=C.customer)
    state = pd.DataFrame(index=ids)
    purchases = events[events[C.event_type] == E.purchase]
    state = state.join(_purchase_summary(purchases, products, cfg.min_orders_for_gap))
    state["orders"] = state["orders"].fillna(0).astype(np.int64)
    state["purchases"] = state["purchases"].fillna(0).astype(np.int64)
    state["value"] = state["value"].fillna(0.0)
    state["days_since_purchase"] = (now - state["last_purchase"]).dt.total_seconds() / 86_400
    state["lifecycle_stage"] = lifecycle_stage(
        state["first_purchase"], state["last_purchase"], state["usual_gap_days"], now, cfg
    )
    state["last_event"] = events.groupby(C.customer)[C.timestamp].max()
    state["last_visit_items"] = _last_visit_items(events, cfg.last_visit_hours)
    returned = events[events[C.event_type] == E.return_]
    state["returned_items"] = returned.groupby(C.customer)[C.product].unique().map(sorted)
    for column in ("last_visit_items", "returned_items"):
        state[column] = state[column].map(lambda v: v if isinstance(v, list) else [])
    profile = customers.set_index(C.customer)
    state[C.region] = _lookup(profile, C.region, ids)
    state["age_band"] = age_band(_lookup(profile, C.birth_year, ids), now).to_numpy()
    state[C.signup_date] = _lookup(profile, C.signup_date, ids)
    return state.reset_index()[STATE_COLUMNS]


def _lookup(profile: pd.DataFrame, column: str, ids: pd.Index) -> pd.Series:
    if column not in profile:
        return pd.Series(pd.NA, index=ids, dtype=object)
    return profile[column].reindex(ids)


def _purchase_summary(
    purchases: pd.DataFrame, products: pd.DataFrame, min_orders: int
) -> pd.DataFrame:
    price = purchases[C.product].map(products.set_index(C.product)[C.price]).fillna(0.0)
    # an order is an order id, or a purchase day where the source gives none
    day = purchases[C.timestamp].dt.floor("D").astype(str)
    order = purchases[C.order].fillna(day) if C.order in purchases else day
    frame = pd.DataFrame({
        C.customer: purchases[C.customer],
        C.timestamp: purchases[C.timestamp],
        "order": order,
        "amount": price.to_numpy() * purchases[C.quantity].to_numpy(),
    })
    summary = frame.groupby(C.customer).agg(
        first_purchase=(C.timestamp, "min"),
        last_purchase=(C.timestamp, "max"),
        orders=("order", "nunique"),
        purchases=(C.timestamp, "size"),
        value=("amount", "sum"),
    )
    summary["usual_gap_days"] = _usual_gap(frame, min_orders)
    return summary


def _usual_gap(frame: pd.DataFrame, min_orders: int) -> pd.Series:
    """Median days between a customer's order times (NaN below ``min_orders`` orders)."""
    orders = frame.groupby([C.customer, "order"])[C.timestamp].min().reset_index()
    orders = orders.sort_values([C.customer, C.timestamp])
    gaps = orders.groupby(C.customer)[C.timestamp].diff().dt.total_seconds() / 86_400
    orders["gap"] = gaps
    per_customer = orders.groupby(C.customer)
    gap = per_customer["gap"].median()
    return gap.where(per_customer.size() >= min_orders)


def _last_visit_items(events: pd.DataFrame, hours: float) -> pd.Series:
    visits = events[events[C.event_type].isin(VISIT_EVENTS)]
    if visits.empty:
        return pd.Series(dtype=object)
    last = visits.groupby(C.customer)[C.timestamp].transform("max")
    recent = visits[visits[C.timestamp] >= last - pd.Timedelta(hours=hours)]
    recent = recent.sort_values(C.timestamp, ascending=False, kind="stable")
    return recent.groupby(C.customer)[C.product].unique().map(list)
