"""LightFM hybrid: customers and offers are the sums of their features' embeddings, so a
customer or an offer without history still has a representation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import sparse

from features.side import CUSTOMER_FEATURES, ITEM_FEATURES
from training.data import TrainData
from training.models.base import (
    POPULAR,
    PROFILE,
    ModelConfig,
    Param,
    Reason,
    Recommender,
    cosine_pairs,
)
from training.models.products import FactorScores


class LightFMConfig(ModelConfig):
    components: int = Field(48, ge=1, le=512, description="Embedding dimensions.")
    loss: Literal["warp", "bpr", "logistic"] = Field("warp", description="Ranking loss.")
    learning_rate: float = Field(0.05, gt=0, description="Adagrad step size.")
    item_alpha: float = Field(1e-6, ge=0, description="L2 penalty on offer features.")
    user_alpha: float = Field(1e-6, ge=0, description="L2 penalty on customer features.")
    epochs: int = Field(20, ge=1, le=500, description="Passes over the data.")
    identity: bool = Field(True, description="Give every customer and offer its own feature.")


def feature_matrix(
    frame: pd.DataFrame, columns: tuple[str, ...], vocabulary: dict[str, int],
    identity: bool, grow: bool,
) -> sparse.csr_matrix:
    """Rows of one-hot features ('id:…' and 'column=value'), each row summing to one.

    With ``grow`` unseen features are added to ``vocabulary``; otherwise they are ignored.
    """
    rows, cols = [], []
    names = [f"id:{i}" for i in frame.index] if identity else None
    values = [frame[c].astype(str).to_numpy() for c in columns]
    for r in range(len(frame)):
        tokens = [f"{c}={v[r]}" for c, v in zip(columns, values, strict=True)]
        if names is not None:
            tokens.append(names[r])
        for token in tokens:
            index = vocabulary.get(token)
            if index is None and grow:
                index = vocabulary[token] = len(vocabulary)
            if index is not None:
                rows.append(r)
                cols.append(index)
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(len(frame), len(vocabulary)))
    counts = np.maximum(np.asarray(matrix.sum(axis=1)).ravel(), 1.0)
    return (sparse.diags(1.0 / counts) @ matrix).astype(np.float32).tocsr()


class LightFMHybrid(Recommender):
    kind = "lightfm"
    config_class = LightFMConfig
    search_space: ClassVar[dict[str, Param]] = {
        "components": Param("int", 16, 128, log=True),
        "loss": Param("categorical", choices=("warp", "bpr")),
        "learning_rate": Param("float", 0.005, 0.2, log=True),
        "item_alpha": Param("float", 1e-8, 1e-3, log=True),
        "user_alpha": Param("float", 1e-8, 1e-3, log=True),
        "epochs": Param("int", 5, 80),
    }
    config: LightFMConfig
    reads_customer_features = True

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.user_vocabulary: dict[str, int] = {}
        self.user_embeddings = np.zeros((0, 0), dtype=np.float32)
        self.user_features = sparse.csr_matrix((0, 0), dtype=np.float32)
        self.item_vectors = np.zeros((0, 0), dtype=np.float32)
        self.item_bias = np.zeros(0, dtype=np.float32)
        self._product = FactorScores()

    def _fit(self, data: TrainData) -> None:
        from lightfm import LightFM

        user_features = feature_matrix(data.customer_features, CUSTOMER_FEATURES,
                                       self.user_vocabulary, self.config.identity, grow=True)
        item_vocabulary: dict[str, int] = {}
        item_features = feature_matrix(data.item_features, ITEM_FEATURES, item_vocabulary,
                                       self.config.identity, grow=True)
        model = LightFM(
            no_components=self.config.components, loss=self.config.loss,
            learning_rate=self.config.learning_rate, item_alpha=self.config.item_alpha,
            user_alpha=self.config.user_alpha, random_state=self.config.seed,
        )
        positives = (data.matrix > 0).astype(np.float32).tocoo()
        # one thread: lock-free updates from several threads would not be reproducible
        model.fit(positives, user_features=user_features, item_features=item_features,
                  epochs=self.config.epochs, num_threads=1)
        self.user_embeddings = model.user_embeddings.astype(np.float32)
        self.user_features = user_features
        self.item_vectors = np.asarray(item_features @ model.item_embeddings, dtype=np.float32)
        self.item_bias = np.asarray(item_features @ model.item_biases, dtype=np.float32)

    def _users(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        users = np.zeros((len(rows), self.user_embeddings.shape[1]), dtype=np.float32)
        known = rows >= 0
        users[known] = self.user_features[rows[known]] @ self.user_embeddings
        described = self._described(customer_features, len(rows)) & ~known
        if described.any():
            frame = customer_features.iloc[np.flatnonzero(described)]  # type: ignore[union-attr]
            features = feature_matrix(frame, CUSTOMER_FEATURES, self.user_vocabulary,
                                      identity=False, grow=False)
            users[described] = features @ self.user_embeddings
        folded = ~known & ~described & (np.diff(history.indptr) > 0)
        if folded.any():  # a session's items stand in for an unknown customer
            part = history[np.flatnonzero(folded)]
            weights = sparse.diags(1.0 / np.maximum(np.asarray(part.sum(axis=1)).ravel(), 1e-9))
            users[folded] = weights @ part @ self.item_vectors
        return users

    @staticmethod
    def _described(customer_features: pd.DataFrame | None, n: int) -> np.ndarray:
        if customer_features is None:
            return np.zeros(n, dtype=bool)
        present = [c for c in CUSTOMER_FEATURES if c in customer_features]
        if not present:
            return np.zeros(n, dtype=bool)
        return customer_features[present].notna().any(axis=1).to_numpy()

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        users = self._users(rows, history, customer_features)
        return self._product(users, self.item_vectors) + self.item_bias

    def _fallback(self, rows: np.ndarray, history: sparse.csr_matrix,
                  customer_features: pd.DataFrame | None) -> np.ndarray:
        # known customers have features from training: their features rank for them
        no_history = np.diff(history.indptr) == 0
        described = self._described(customer_features, len(rows)) & (rows < 0)
        fallback = np.full(len(rows), None, dtype=object)
        fallback[no_history & described] = PROFILE
        fallback[no_history & ~described & (rows < 0)] = POPULAR
        return fallback

    def pair_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        return cosine_pairs(self.item_vectors, targets, anchors)

    def explain(self, customer_id: str, product_ids: list[str],
                history: sparse.csr_matrix | None = None) -> list[Reason]:
        reasons = super().explain(customer_id, product_ids, history)
        if self.customers.index_of([customer_id])[0] < 0:
            return [Reason("similar_customers") if r.code == "popular" else r for r in reasons]
        return reasons

    def _held_row(self, row: int) -> dict[str, Any]:
        names = {index: name for name, index in self.user_vocabulary.items()}
        features = self.user_features[row]
        return {"features": {names[i]: float(w) for i, w in zip(features.indices, features.data,
                                                                 strict=True)}}

    def _forget_rows(self, rows: np.ndarray) -> None:
        # identity features belong to one customer only: their embeddings go with them
        features = self.user_features.tocsc()
        owned = np.flatnonzero(np.diff(features.indptr) == 1)
        mine = np.intersect1d(np.unique(self.user_features[rows].indices), owned)
        embeddings = self.user_embeddings.copy()
        embeddings[mine] = 0.0
        keep = np.ones(self.user_features.shape[0], dtype=np.float32)
        keep[rows] = 0.0
        self.user_features = (sparse.diags(keep) @ self.user_features).tocsr()
        self.user_embeddings = embeddings
        # their identity feature keeps its column, under a name that is not their id
        for row, customer_id in zip(rows, self.customers.names[rows], strict=True):
            column = self.user_vocabulary.pop(f"id:{customer_id}", None)
            if column is not None:
                self.user_vocabulary[f"id:\0erased:{row}"] = column

    def _arrays(self) -> dict[str, np.ndarray]:
        f = self.user_features
        return {"user_embeddings": self.user_embeddings, "item_vectors": self.item_vectors,
                "item_bias": self.item_bias, "uf_data": f.data, "uf_indices": f.indices,
                "uf_indptr": f.indptr, "uf_shape": np.asarray(f.shape)}

    def save(self, path: Path) -> Path:
        super().save(path)
        (path / "user_vocabulary.json").write_text(json.dumps(self.user_vocabulary))
        return path

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.user_embeddings = arrays["user_embeddings"]
        self.item_vectors, self.item_bias = arrays["item_vectors"], arrays["item_bias"]
        self._product.prepare(self.item_vectors)
        self.user_features = sparse.csr_matrix(
            (arrays["uf_data"], arrays["uf_indices"], arrays["uf_indptr"]),
            shape=tuple(arrays["uf_shape"]),
        )
        self.user_vocabulary = json.loads((path / "user_vocabulary.json").read_text())
