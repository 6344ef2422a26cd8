"""Personas: clusters of buying customers on recency, frequency, value and category taste."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.preprocessing import StandardScaler

from features.columns import Columns as C
from features.columns import EventType as E
from features.config import SegmentConfig

PROSPECTS = "prospects"
MINI_BATCH_ABOVE = 100_000


def category_shares(
    events: pd.DataFrame, products: pd.DataFrame, top: int
) -> pd.DataFrame:
    """Share of each customer's purchased units per category (top categories + 'other')."""
    purchases = events[events[C.event_type] == E.purchase]
    category = purchases[C.product].map(products.set_index(C.product)[C.category])
    leading = category.value_counts().index[:top]
    category = category.where(category.isin(leading), "other")
    units = pd.DataFrame({C.customer: purchases[C.customer], "category": category,
                          "units": purchases[C.quantity]})
    table = units.pivot_table(index=C.customer, columns="category", values="units",
                              aggfunc="sum", fill_value=0)
    return table.div(table.sum(axis=1), axis=0)


def segment_customers(
    state: pd.DataFrame, events: pd.DataFrame, products: pd.DataFrame, cfg: SegmentConfig
) -> tuple[pd.Series, pd.DataFrame]:
    """Segment name per customer and a readable profile of each segment.

    Customers who never bought form the segment 'prospects'.
    """
    ids = state[C.customer]
    segment = pd.Series(PROSPECTS, index=pd.Index(ids, name=C.customer), name="segment")
    buyers = state[state["orders"] > 0].set_index(C.customer)
    if buyers.empty:
        return segment, _profiles(segment, state, pd.DataFrame())
    shares = category_shares(events, products, cfg.n_categories).reindex(buyers.index).fillna(0)
    behaviour = pd.DataFrame({
        "recency": np.log1p(buyers["days_since_purchase"].clip(lower=0)),
        "frequency": np.log1p(buyers["orders"]),
        "value": np.log1p(buyers["value"].clip(lower=0)),
    })
    matrix = StandardScaler().fit_transform(pd.concat([behaviour, shares], axis=1).to_numpy())
    k = min(cfg.n_segments, len(buyers))
    algorithm = MiniBatchKMeans if len(buyers) > MINI_BATCH_ABOVE else KMeans
    labels = algorithm(n_clusters=k, random_state=cfg.seed, n_init=3).fit_predict(matrix)
    names = _names(labels, buyers, shares)
    segment.loc[buyers.index] = names[labels]
    return segment, _profiles(segment, state, shares)


def _names(labels: np.ndarray, buyers: pd.DataFrame, shares: pd.DataFrame) -> np.ndarray:
    """Name clusters like 'loyal kitchen buyers' from how they differ from all buyers."""
    recency, frequency, value = (buyers[c] for c in ("days_since_purchase", "orders", "value"))
    names: list[str] = []
    for label in range(labels.max() + 1):
        member = labels == label
        if recency[member].median() > recency.quantile(0.75):
            habit = "lapsed"
        elif frequency[member].median() >= max(frequency.quantile(0.75), 2):
            habit = "loyal"
        elif value[member].median() >= value.quantile(0.75):
            habit = "big-spending"
        elif recency[member].median() <= recency.quantile(0.25):
            habit = "recent"
        else:
            habit = "occasional"
        taste = _taste(shares[member].mean().drop("other", errors="ignore"))
        name = f"{habit} {taste} buyers"
        suffix = 2
        while name in names:
            name = f"{habit} {taste} buyers ({suffix})"
            suffix += 1
        names.append(name)
    return np.array(names, dtype=object)


def _taste(mean_share: pd.Series) -> str:
    """The one or two categories that make up most of a cluster's purchases."""
    top = mean_share.nlargest(2)
    if top.empty or top.iloc[0] < 0.25:
        return "all-round"
    if top.iloc[0] >= 0.6 or len(top) < 2 or top.iloc[1] < 0.2:
        return str(top.index[0])
    return f"{top.index[0]} & {top.index[1]}"


def _profiles(segment: pd.Series, state: pd.DataFrame, shares: pd.DataFrame) -> pd.DataFrame:
    frame = state.set_index(C.customer)[["days_since_purchase", "orders", "value"]]
    frame = frame.assign(segment=segment)
    profile = frame.groupby("segment").agg(
        customers=("orders", "size"),
        median_days_since_purchase=("days_since_purchase", "median"),
        median_orders=("orders", "median"),
        median_value=("value", "median"),
    )
    profile["share"] = profile["customers"] / profile["customers"].sum()
    if not shares.empty:
        mean_shares = shares.groupby(segment.reindex(shares.index)).mean()
        profile["top_categories"] = mean_shares.apply(
            lambda row: ", ".join(f"{c} {v:.0%}" for c, v in row.nlargest(3).items() if v > 0),
            axis=1,
        )
    profile["top_categories"] = profile.get("top_categories", pd.Series(dtype=str)).fillna("")
    return profile.sort_values("customers", ascending=False).reset_index()
