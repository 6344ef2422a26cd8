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


def category_units(events: pd.DataFrame, products: pd.DataFrame
                   ) -> tuple[pd.Index, np.ndarray, pd.Index, np.ndarray]:
    """The purchases of ``events`` as codes: the buying customers, a (customer, category)
    code pair per purchase (category -1: not in the catalogue), the categories in the
    catalogue's order of appearance, and the units bought."""
    rows = np.flatnonzero(kind_masks(events[C.event_type])[E.purchase])
    customer_code, customers = pd.factorize(events[C.customer].iloc[rows])
    product_row = pd.Index(products[C.product]).get_indexer(events[C.product].iloc[rows])
    category_code, categories = pd.factorize(products[C.category])
    category = np.where(product_row >= 0, category_code[product_row], -1)
    units = events[C.quantity].to_numpy(dtype=float)[rows]
    return customers, np.stack([customer_code, category]), pd.Index(categories), units


def category_totals(events: pd.DataFrame, products: pd.DataFrame) -> pd.Series:
    """Purchased units per category, every category of the catalogue in its order (the
    totals of parts of a history add up to the totals of the whole)."""
    _, codes, categories, units = category_units(events, products)
    known = codes[1] >= 0
    return pd.Series(np.bincount(codes[1][known], weights=units[known],
                                 minlength=len(categories)), index=categories)


def leading_categories(totals: pd.Series, top: int) -> list[str]:
    """The ``top`` categories by units, ties in catalogue order."""
    return [str(c) for c in totals.index[np.argsort(-totals.to_numpy(), kind="stable")[:top]]]


def category_shares(
    events: pd.DataFrame, products: pd.DataFrame, top: int, leading: list[str] | None = None
) -> pd.DataFrame:
    """Share of each customer's purchased units per category: the ``leading`` categories
    (default: the ``top`` of these events) and 'other'."""
    customers, codes, categories, units = category_units(events, products)
    if leading is None:
        leading = leading_categories(category_totals(events, products), top)
    column = np.full(len(categories) + 1, len(leading))  # unknown and the rest: 'other'
    column[categories.get_indexer(pd.Index(leading))] = np.arange(len(leading))
    matrix = sparse.coo_matrix(
        (units, (codes[0], column[codes[1]])),
        shape=(len(customers), len(leading) + 1),
    ).toarray()
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1e-12)
    return pd.DataFrame(matrix, index=pd.Index(customers, name=C.customer),
                        columns=[*leading, "other"])


def segment_customers(
    state: pd.DataFrame, events: pd.DataFrame, products: pd.DataFrame, cfg: SegmentConfig
) -> tuple[pd.Series, pd.DataFrame]:
    """Segment name per customer and a readable profile of each segment.

    Customers who never bought form the segment 'prospects'.
    """
    summary = state.set_index(C.customer)[list(SUMMARY)]
    buyers = summary.index[summary["orders"] > 0]
    shares = (category_shares(events, products, cfg.n_categories).reindex(buyers).fillna(0)
              if len(buyers) else pd.DataFrame())
    return cluster_segments(summary, shares, cfg)


SUMMARY = ("days_since_purchase", "orders", "value")


def cluster_segments(summary: pd.DataFrame, shares: pd.DataFrame, cfg: SegmentConfig
                     ) -> tuple[pd.Series, pd.DataFrame]:
    """Segments from each customer's ``summary`` (:data:`SUMMARY`, indexed by customer) and
    the category shares of its buyers (indexed alike, in the summary's order). The clusters
    depend on the order of the rows, so every engine passes them in one order."""
    segment = pd.Series(PROSPECTS, index=summary.index.rename(C.customer), name="segment")
    buyers = summary[summary["orders"] > 0]
    if buyers.empty:
        return segment, _profiles(segment, summary, pd.DataFrame())
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
    return segment, _profiles(segment, summary, shares)


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


def _profiles(segment: pd.Series, summary: pd.DataFrame, shares: pd.DataFrame
              ) -> pd.DataFrame:
    frame = summary[list(SUMMARY)].assign(segment=segment.to_numpy())
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
