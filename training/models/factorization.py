"""Matrix factorisation with implicit: alternating least squares and BPR."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import sparse

from training.data import TrainData
from training.models.base import ModelConfig, Param, Recommender, cosine_pairs, csr_rows
from training.models.products import FactorScores

# A fold-in solves a request's one row (or a batch's few): one thread. implicit's default
# starts an OpenMP team on every core per call, and with one serving worker per core the
# teams wait on each other: 37% of a loaded worker's time went to folding in.
FOLD_IN_THREADS = 1


class FactorConfig(ModelConfig):
    factors: int = Field(64, ge=1, le=1024, description="Latent dimensions.")
    regularization: float = Field(0.01, ge=0, description="L2 penalty on the factors.")
    iterations: int = Field(15, ge=1, le=1000, description="Passes over the data.")


class FactorModel(Recommender):
    """Scores are user factors · item factors; unknown customers with a history are folded in."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.user_factors = np.zeros((0, 0), dtype=np.float32)
        self.item_factors = np.zeros((0, 0), dtype=np.float32)
        self._product = FactorScores()

    def _score(self, rows: np.ndarray, history: sparse.csr_matrix,
               customer_features: pd.DataFrame | None) -> np.ndarray:
        users = np.zeros((len(rows), self.item_factors.shape[1]), dtype=np.float32)
        known = rows >= 0
        users[known] = self.user_factors[rows[known]]
        unknown = np.flatnonzero(~known & (np.diff(history.indptr) > 0))
        if len(unknown) == history.shape[0]:  # a request's history given: all of it
            users[:] = self._fold_in(history)
        elif len(unknown):
            users[unknown] = self._fold_in(csr_rows(history, unknown))
        return self._product(users, self.item_factors)

    def _fold_in(self, history: sparse.csr_matrix) -> np.ndarray:
        """Factors for customers who were not in training, from their history."""
        weights = sparse.diags(1.0 / np.maximum(np.asarray(history.sum(axis=1)).ravel(), 1e-9))
        return np.asarray(weights @ history @ self.item_factors, dtype=np.float32)

    def pair_similarity(self, targets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        return cosine_pairs(self.item_factors, targets, anchors)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def _forget_rows(self, rows: np.ndarray) -> None:
        factors = self.user_factors.copy()
        factors[rows] = 0.0
        self.user_factors = factors

    def _held_row(self, row: int) -> dict[str, Any]:
        return {"factors": [round(float(v), 6) for v in self.user_factors[row]]}

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self.user_factors, self.item_factors = arrays["user_factors"], arrays["item_factors"]
        self._product.prepare(self.item_factors)


class ALSConfig(FactorConfig):
    alpha: float = Field(1.0, gt=0, description="Confidence per unit of interaction weight.")


class ALS(FactorModel):
    kind = "als"
    config_class = ALSConfig
    search_space: ClassVar[dict[str, Param]] = {
        "factors": Param("int", 16, 256, log=True),
        "regularization": Param("float", 1e-3, 10.0, log=True),
        "alpha": Param("float", 0.1, 100.0, log=True),
        "iterations": Param("int", 5, 40),
    }
    config: ALSConfig

    def _fit(self, data: TrainData) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(
            factors=self.config.factors, regularization=self.config.regularization,
            alpha=self.config.alpha, iterations=self.config.iterations,
            random_state=self.config.seed,
        )
        model.fit(data.matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        model.num_threads = FOLD_IN_THREADS
        self._solver = model

    def _fold_in(self, history: sparse.csr_matrix) -> np.ndarray:
        # the exact least-squares solution for a new row, as in a training half-step
        solver = getattr(self, "_solver", None)
        if solver is None:
            from implicit.cpu.als import AlternatingLeastSquares

            solver = AlternatingLeastSquares(
                factors=self.item_factors.shape[1], regularization=self.config.regularization,
                alpha=self.config.alpha, num_threads=FOLD_IN_THREADS)
            solver.item_factors = self.item_factors
            solver.user_factors = np.zeros((1, self.item_factors.shape[1]), np.float32)
            self._solver = solver
        users = np.arange(history.shape[0])
        return np.asarray(solver.recalculate_user(users, history), dtype=np.float32)


class BPRConfig(FactorConfig):
    learning_rate: float = Field(0.01, gt=0, description="SGD step size.")
    iterations: int = Field(100, ge=1, le=2000, description="Passes over the data.")


class BPR(FactorModel):
    kind = "bpr"
    config_class = BPRConfig
    search_space: ClassVar[dict[str, Param]] = {
        "factors": Param("int", 16, 256, log=True),
        "regularization": Param("float", 1e-4, 1.0, log=True),
        "learning_rate": Param("float", 1e-3, 0.2, log=True),
        "iterations": Param("int", 20, 400, log=True),
    }
    config: BPRConfig

    def _fit(self, data: TrainData) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        # one thread: hogwild updates from several threads would not be reproducible
        model = BayesianPersonalizedRanking(
            factors=self.config.factors, learning_rate=self.config.learning_rate,
            regularization=self.config.regularization, iterations=self.config.iterations,
            random_state=self.config.seed, num_threads=1,
        )
        model.fit((data.matrix > 0).astype(np.float32).tocsr(), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
