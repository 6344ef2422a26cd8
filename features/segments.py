"""Personas: clusters of buying customers on recency, frequency, value and category taste."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.preprocessing import StandardScaler

from features.columns import Columns as C
from features.columns import EventType as E
from features.config import SegmentConfig
from features.history import kind_masks

PROSPECTS = "prospects"
MINI_BATCH_ABOVE = 100_000


def category_shares(
    events: pd.DataFrame, products: pd.DataFrame, top: int
) -> pd.DataFrame:
    """Share of each customer's purchased units per category (top categories + 'other')."""
    rows = np.flatnonzero(kind_masks(events[C.event_type])[E.purchase])
    customer_code, customers = pd.factorize(events[C.customer].iloc[rows])
    product_row = pd.Index(products[C.product]).get_indexer(events[C.product].iloc[rows])
    category_code, categories = pd.factorize(products[C.category])
    category = np.where(product_row >= 0, category_code[product_row], -1)
    units = events[C.quantity].to_numpy(dtype=float)[rows]
    totals = np.bincount(category[category >= 0], weights=units[category >= 0],
                         minlength=len(categories))
    leading = np.argsort(-totals, kind="stable")[:top]
    column = np.full(len(categories) + 1, len(leading))  # unknown and the rest: 'other'
    column[leading] = np.arange(len(leading))
    matrix = sparse.coo_matrix(
        (units, (customer_code, column[category])),
        shape=(len(customers), len(leading) + 1),
    ).toarray()
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1e-12)
    names = [str(categories[i]) for i in leading] + ["other"]
    return pd.DataFrame(matrix, index=pd.Index(customers, name=C.customer), columns=names)


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
