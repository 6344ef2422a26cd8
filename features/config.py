"""Configuration of the feature pipeline: pydantic models that round-trip to flat params."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventWeights(StrictModel):
    purchase: float = Field(1.0, ge=0, description="Weight of one purchase of quantity 1.")
    cart: float = Field(0.3, ge=0, description="Weight of a cart event.")
    wishlist: float = Field(0.5, ge=0, description="Weight of a wishlist event.")
    view: float = Field(0.1, ge=0, description="Weight of a view.")
    rating: float = Field(
        0.5, ge=0, description="Weight per rating point away from 2.5 (ratings <= 2 are negative)."
    )
    return_: float = Field(
        1.0, ge=0, alias="return", description="Weight a return subtracts per unit purchase weight."
    )
    half_life_days: float = Field(
        180.0, gt=0, description="Exponential time decay: an event this old counts half."
    )
    damp_quantity: bool = Field(
        True, description="Purchases count log2(1 + quantity) instead of the raw quantity."
    )
    click: float = Field(0.3, ge=0, description="Weight of a click on a served offer.")
    conversion: float = Field(0.5, ge=0, description="Weight of a conversion from an offer.")
    dismiss: float = Field(0.3, ge=0, description="Weight a dismissal subtracts.")
    ignored: float = Field(
        0.1, ge=0, description="Weight subtracted from an offer shown often without a response."
    )
    ignored_after: int = Field(
        3, ge=1, description="Impressions without a click after which an offer counts as ignored."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LifecycleConfig(StrictModel):
    new_days: int = Field(30, ge=1, description="First purchase at most this many days ago: new.")
    at_risk_days: int = Field(
        90, ge=1, description="No purchase for longer than this: at risk (if not lapsed)."
    )
    at_risk_gap_factor: float = Field(
        2.5, gt=0, description="Also at risk after this many times the customer's usual gap."
    )
    min_orders_for_gap: int = Field(
        3, ge=2, description="Orders needed before the customer's own gap is trusted."
    )
    lapsed_days: int = Field(180, ge=1, description="No purchase for longer than this: lapsed.")
    last_visit_hours: float = Field(
        24.0, gt=0, description="Events this close to the last event belong to the last visit."
    )


class SegmentConfig(StrictModel):
    n_segments: int = Field(6, ge=1, le=30, description="Clusters of buying customers.")
    n_categories: int = Field(10, ge=1, description="Top categories whose shares describe taste.")
    seed: int = Field(7, description="Seed of the clustering.")


class FeatureConfig(StrictModel):
    weights: EventWeights = EventWeights()
    lifecycle: LifecycleConfig = LifecycleConfig()
    segments: SegmentConfig = SegmentConfig()
    price_bands: tuple[str, ...] = ("budget", "mid", "upper", "premium")


def to_flat(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to ``{"a.b.c": value}`` (MLflow params, Optuna spaces)."""
    flat: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        key = f"{prefix}{field.alias or name}"
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            flat.update(to_flat(value, prefix=f"{key}."))
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def from_flat(cls: type[M], flat: dict[str, Any]) -> M:
    """Inverse of :func:`to_flat`; unknown keys are an error, as in the model itself.

    A nested setting changes only itself: the rest of its section keeps the field's own
    default (``itemknn.neighbours`` leaves a blend's ``itemknn.similarity`` as the blend sets
    it, not as the neighbour model's class does)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for name, field in cls.model_fields.items():
        key = field.alias or name
        default = field.get_default(call_default_factory=True)
        if isinstance(nested.get(key), dict) and isinstance(default, BaseModel):
            nested[key] = _merged(default.model_dump(by_alias=True), nested[key])
    return cls.model_validate(nested)


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        inner = out.get(key)
        out[key] = (_merged(inner, value) if isinstance(value, dict) and isinstance(inner, dict)
                    else value)
    return out
