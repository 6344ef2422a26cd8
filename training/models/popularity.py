"""Popularity: global, or per region or segment shrunk towards the global ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import sparse

from training.data import TrainData
from training.models.base import ModelConfig, Param, Reason, Recommender


class PopularityConfig(ModelConfig):
    by: Literal["global", "region", "segment"] = Field(
        "global", description="Rank by buyers overall, or within the customer's region/segment."
    )
    shrink: float = Field(
        20.0, ge=0, description="Buyers' worth of global popularity mixed into each group."
    )


class Popularity(Recommender):
    kind = "popularity"
    config_class = PopularityConfig
    search_space: ClassVar[dict[str, Param]] = {
        "by": Param("categorical", choices=("global", "region", "segment")),
        "shrink": Param("float", 1.0, 500.0, log=True),
    }
    config: PopularityConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.groups = pd.Index([], dtype=object)
        self.group_scores = np.zeros((0, 0), dtype=np.float32)
        self.customer_group = np.zeros(0, dtype=np.int64)

    def _fit(self, data: TrainData) -> None:
        if self.config.by == "global":
            return
        labels = data.customer_features[self.config.by].astype(str).to_numpy()
        codes, groups = pd.factorize(labels)
        membership = sparse.csr_matrix(
            (np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))),
            shape=(len(groups), len(codes)),
        )
        buyers = np.asarray((membership @ (data.matrix > 0).astype(np.float32)).todense())
        # share of a group's customers who bought each offer, shrunk towards the share of all
        # customers: (group buyers + shrink * overall share) / (group size + shrink)
        overall = data.buyers() / max(len(codes), 1)
        size = np.bincount(codes, minlength=len(groups))[:, None]
        shrink = self.config.shrink
        self.group_scores = ((buyers + shrink * overall) / (size + shrink)).astype(np.float32)
        self.groups = pd.Index(groups)
        self.customer_group = codes.astype(np.int64)

    def _group_of(self, rows: np.ndarray, features: pd.DataFrame | None) -> np.ndarray:
        group = (np.where(rows >= 0, self.customer_group[np.maximum(rows, 0)], -1)
                 if len(self.customer_group) else np.full(len(rows), -1))
        if features is not None and self.config.by in features:
            given = self.groups.get_indexer(pd.Index(features[self.config.by].astype(str)))
            group = np.where(given >= 0, given, group)
        return group

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        scores = np.tile(self.popularity, (len(rows), 1))
        if self.config.by != "global" and len(self.groups):
            group = self._group_of(rows, customer_features)
            scores[group >= 0] = self.group_scores[group[group >= 0]]
        return scores

    def _fallback(self, rows: np.ndarray, history: sparse.csr_matrix,
                  customer_features: pd.DataFrame | None) -> np.ndarray:
        return np.full(len(rows), None, dtype=object)  # popularity is its own ranking

    def explain(self, customer_id: str, product_ids: list[str],
                history: sparse.csr_matrix | None = None) -> list[Reason]:
        return [Reason("popular") for _ in product_ids]

    def _forget_rows(self, rows: np.ndarray) -> None:
        if len(self.customer_group):
            group = self.customer_group.copy()
            group[rows] = -1
            self.customer_group = group

    def _held_row(self, row: int) -> dict[str, Any]:
        if not len(self.customer_group) or self.customer_group[row] < 0:
            return {}
        return {"group": {self.config.by: str(self.groups[self.customer_group[row]])}}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"group_scores": self.group_scores, "customer_group": self.customer_group,
                "groups": np.asarray(self.groups, dtype=str)}

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.group_scores = arrays["group_scores"]
        self.customer_group = arrays["customer_group"]
        self.groups = pd.Index(arrays["groups"].tolist(), dtype=object)
