"""Candidate models, by the name the command line and MLflow use."""

from __future__ import annotations

from training.models.base import ModelConfig, Param, Reason, Recommender
from training.models.blend import Blend
from training.models.factorization import ALS, BPR
from training.models.hybrid import LightFMHybrid
from training.models.neighbours import EASE, Follows, ItemKNN
from training.models.popularity import Popularity

MODELS: dict[str, type[Recommender]] = {
    model.kind: model for model in (Popularity, ALS, BPR, ItemKNN, Follows, EASE, LightFMHybrid,
                                 Blend)
}


def create(kind: str, params: dict[str, object] | None = None) -> Recommender:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    return MODELS[kind].from_params(params or {})


__all__ = ["MODELS", "ModelConfig", "Param", "Reason", "Recommender", "create"]
