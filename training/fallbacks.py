"""What a customer the model cannot rank is offered: what sells among the customers of their
region where anybody there bought, else what sells overall. One fallback choice, used by
serving's scorer and by the offline evaluation alike, so what production serves to a
customer without history is what the metrics measured."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from training.models.base import POPULAR

POPULAR_IN_REGION = "popular_in_region"


class RegionalPopularity:
    """Per region, how many of its customers bought each offer, scaled so that the region's
    best seller counts 1. ``regions`` holds each customer's region (None or '' where not
    known), aligned to the rows of ``bought`` (customers x offers, positive where bought)."""

    def __init__(self, regions: Sequence[str | None] | np.ndarray, bought: sparse.csr_matrix
                 ) -> None:
        regions = np.asarray(regions, dtype=object)
        if len(regions) != bought.shape[0]:
            raise ValueError(f"{len(regions)} regions for {bought.shape[0]} customers")
        self.names = pd.Index(sorted({str(r) for r in regions if r}), dtype=object)
        codes = self.names.get_indexer(pd.Index(regions, dtype=object))
        known = np.flatnonzero(codes >= 0)
        member = sparse.csr_matrix((np.ones(len(known)), (codes[known], known)),
                                   shape=(len(self.names), bought.shape[0]))
        buyers = np.asarray((member @ (bought > 0).astype(np.float64)).todense())
        self.table = buyers / np.maximum(buyers.max(axis=1, keepdims=True), 1.0)

    def of(self, region: str | None) -> np.ndarray | None:
        """The region's popularity over every offer, None for a region nobody lives in."""
        if not region or region not in self.names:
            return None
        return self.table[self.names.get_loc(region)]

    def apply(self, scores: np.ndarray, fallback: np.ndarray,
              regions: Sequence[str | None] | np.ndarray) -> np.ndarray:
        """Rows of a model's answer (``scores`` float64, changed in place) that fell back to
        popularity get their region's instead, where it is known; returns the fallback per
        row with ``POPULAR_IN_REGION`` where it did."""
        fallback = np.asarray(fallback, dtype=object).copy()
        for row in np.flatnonzero(fallback == POPULAR):
            regional = self.of(regions[int(row)])
            if regional is not None:
                scores[row] = regional
                fallback[row] = POPULAR_IN_REGION
        return fallback
