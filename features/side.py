"""Side features for hybrid models: offers by category, brand and price band; customers by
region, age band, lifecycle stage and segment."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import Columns as C

ITEM_FEATURES = (C.category, C.brand, "price_band", C.offer_type)
CUSTOMER_FEATURES = (C.region, "age_band", "lifecycle_stage", "segment")


def price_bands(price: pd.Series, names: tuple[str, ...]) -> pd.Series:
    """Quantile bands of the priced offers; offers without a price get 'unpriced'."""
    priced = price[price > 0]
    if priced.empty:
        return pd.Series("unpriced", index=price.index)
    edges = np.unique(priced.quantile(np.linspace(0, 1, len(names) + 1)).to_numpy())
    edges[0], edges[-1] = -np.inf, np.inf
    labels = list(names[: len(edges) - 1])
    bands = pd.cut(price, bins=edges.tolist(), labels=labels).astype(object)
    return bands.where(price > 0, "unpriced")


def item_features(products: pd.DataFrame, bands: tuple[str, ...]) -> pd.DataFrame:
    frame = products[[C.product, C.category, C.brand, C.offer_type]].copy()
    frame[C.brand] = frame[C.brand].fillna("no brand")
    frame["price_band"] = price_bands(products[C.price].fillna(0.0), bands)
    return frame[[C.product, *ITEM_FEATURES]]


def customer_features(state: pd.DataFrame, segment: pd.Series) -> pd.DataFrame:
    frame = state[[C.customer, C.region, "age_band", "lifecycle_stage"]].copy()
    frame[C.region] = frame[C.region].fillna("unknown")
    frame["segment"] = segment.reindex(frame[C.customer]).to_numpy()
    return frame[[C.customer, *CUSTOMER_FEATURES]]
