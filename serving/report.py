"""An experiment's report: what each arm's customers did with what they were shown, and the
lift of every arm against the control arm, with 95% intervals.

The unit is the customer, as assignment is: a customer counts in the arm of their first
logged list. Per arm: customers, lists, impressions, clicks, click-through rate, and per
customer clicks, conversion (a share of customers), revenue and margin. Lift is the
difference of an arm's mean to the control arm's with Welch's 95% interval, and the relative
lift with a delta-method interval. A sample-ratio-mismatch check compares the customers per
arm with the shares they were assigned with (chi-squared test; flagged under p = 0.001): a
mismatch means the split is broken and the lifts cannot be trusted. Under the experiment's
minimum sample per arm the report warns that its intervals are wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Columns as C

METRICS = ("clicks", "converted", "revenue", "margin")  # per customer, with lift
SRM_P = 0.001
LEVEL = 0.95
BREAKDOWNS = ("channel", "stage", C.product, "segment")
TOP_OFFERS = 20


@dataclass
class Report:
    experiment: str
    control: str
    arms: list[dict[str, Any]]
    lift: list[dict[str, Any]]
    srm: dict[str, Any]
    warnings: list[str]
    breakdowns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return _finite({"experiment": self.experiment, "control": self.control,
                        "arms": self.arms, "lift": self.lift, "srm": self.srm,
                        "warnings": self.warnings, "breakdowns": self.breakdowns})


def per_customer(attributed: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: their arm (of their first list), lists, impressions, clicks,
    whether they converted, revenue and margin."""
    first = attributed.sort_values("decided_at").groupby("token", sort=False)["arm"].first()
    grouped = attributed.groupby("token")
    frame = pd.DataFrame({
        "arm": first,
        "lists": grouped["request_id"].nunique(),
        "impressions": grouped.size(),
        "clicks": grouped["clicked"].sum().astype(float),
        "converted": grouped["converted"].any().astype(float),
        "revenue": grouped["revenue"].sum(),
        "margin": grouped["margin"].sum(),
    })
    return frame


def report(name: str, attributed: pd.DataFrame, shares: dict[str, float], control: str,
           min_customers: int, segments: pd.Series | None = None) -> Report:
    """The report of one experiment from its attributed decision log (one row per offer
    shown, see :func:`serving.attribution.attribute`); ``shares``: the arms' assigned shares;
    ``control``: the arm the others are compared with; ``segments``: each token's segment."""
    if control not in shares:
        raise ValueError(f"the control arm {control!r} is not an arm of {name!r}: "
                         f"{sorted(shares)}")
    customers = per_customer(attributed) if len(attributed) else pd.DataFrame(
        columns=["arm", "lists", "impressions", *METRICS])
    arms = [_arm_row(arm, customers[customers["arm"] == arm], attributed) for arm in shares]
    lift = [_lift(arm, metric, customers[customers["arm"] == arm][metric].to_numpy(float),
                  customers[customers["arm"] == control][metric].to_numpy(float))
            for arm in shares if arm != control for metric in METRICS]
    srm = sample_ratio(customers["arm"].value_counts().reindex(list(shares), fill_value=0),
                       shares)
    warnings = []
    if srm["mismatch"]:
        warnings.append(f"sample ratio mismatch (p = {srm['p_value']:.2g}): customers per arm "
                        f"{srm['observed']} against the shares {srm['expected_shares']}; the "
                        "split is broken, do not trust the lifts")
    small = [row["arm"] for row in arms if row["customers"] < min_customers]
    if small:
        warnings.append(f"under the minimum sample of {min_customers} customers per arm: "
                        f"{', '.join(small)}; the intervals are wide")
    if segments is not None and len(attributed):
        attributed = attributed.assign(segment=segments.reindex(attributed["token"])
                                       .fillna("unknown").to_numpy())
    breakdowns = {by: _breakdown(attributed, by) for by in BREAKDOWNS
                  if by in attributed.columns}
    return Report(name, control, arms, lift, srm, warnings, breakdowns)


def _arm_row(arm: str, customers: pd.DataFrame, attributed: pd.DataFrame) -> dict[str, Any]:
    shown = attributed[attributed["arm"] == arm] if len(attributed) else attributed
    impressions, clicks = int(customers["impressions"].sum()), int(customers["clicks"].sum())
    n = len(customers)
    return {"arm": arm, "customers": n, "lists": int(customers["lists"].sum()),
            "impressions": impressions, "clicks": clicks,
            "conversions": int(shown["converted"].sum()) if len(shown) else 0,
            "click_through_rate": clicks / impressions if impressions else math.nan,
            **{f"{metric}_per_customer": float(customers[metric].mean()) if n else math.nan
               for metric in METRICS}}


def _lift(arm: str, metric: str, treated: np.ndarray, control: np.ndarray) -> dict[str, Any]:
    """The difference of means with Welch's interval, and the relative lift with a
    delta-method interval."""
    from scipy import stats  # the service imports this module; scipy.stats only reports need

    row: dict[str, Any] = {"arm": arm, "metric": f"{metric}_per_customer",
                           "n": len(treated), "n_control": len(control)}
    if len(treated) < 2 or len(control) < 2:
        return {**row, **dict.fromkeys(("treated", "control", "difference", "low", "high",
                                        "p_value", "relative", "relative_low",
                                        "relative_high"), math.nan)}
    mt, mc = treated.mean(), control.mean()
    vt, vc = treated.var(ddof=1) / len(treated), control.var(ddof=1) / len(control)
    se = math.sqrt(vt + vc)
    if se > 0:
        # Welch-Satterthwaite degrees of freedom
        dof = (vt + vc) ** 2 / (vt**2 / (len(treated) - 1) + vc**2 / (len(control) - 1))
        half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * se
        p_value = float(2 * stats.t.sf(abs(mt - mc) / se, dof))
    else:
        half, p_value = 0.0, (1.0 if mt == mc else 0.0)
    relative, rel_half = math.nan, math.nan
    if mc > 0:
        relative = float(mt / mc - 1)
        rel_se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
        rel_half = float(stats.norm.ppf(0.5 + LEVEL / 2)) * rel_se
    return {**row, "treated": float(mt), "control": float(mc), "difference": float(mt - mc),
            "low": float(mt - mc - half), "high": float(mt - mc + half), "p_value": p_value,
            "relative": relative, "relative_low": relative - rel_half,
            "relative_high": relative + rel_half}


def sample_ratio(observed: pd.Series, shares: dict[str, float]) -> dict[str, Any]:
    """The chi-squared test of customers per arm against the assigned shares."""
    from scipy import stats

    total = int(observed.sum())
    expected = np.array([shares[arm] for arm in observed.index]) * total
    p_value = float(stats.chisquare(observed.to_numpy(float), expected).pvalue) \
        if total and (expected > 0).all() else math.nan
    return {"observed": {str(k): int(v) for k, v in observed.items()},
            "expected_shares": {k: round(v, 6) for k, v in shares.items()},
            "p_value": p_value, "mismatch": bool(p_value < SRM_P)}


def _breakdown(attributed: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Per arm and value of ``by``: customers, impressions, clicks, conversions, revenue;
    for offers only the most shown."""
    if not len(attributed):
        return []
    table = attributed.groupby(["arm", by], dropna=False).agg(
        customers=("token", "nunique"), impressions=("token", "size"),
        clicks=("clicked", "sum"), conversions=("converted", "sum"),
        revenue=("revenue", "sum")).reset_index()
    table["click_through_rate"] = table["clicks"] / table["impressions"]
    if by == C.product:
        table = table.sort_values("impressions", ascending=False).groupby("arm").head(TOP_OFFERS)
    table[by] = table[by].astype(object).where(table[by].notna(), None)
    return [{str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in table.to_dict("records")]


def _finite(value: Any) -> Any:
    """JSON has no NaN: None in its place."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def experiment_report(store: Any, name: str, prices: Any, control: str | None = None,
                      control_share: float = 0.0, window_days: float | None = None,
                      segments: pd.Series | None = None) -> Report:
    """The report of experiment ``name`` from the store's decision log, feedback and events
    (``universal-control``: the universal control group against every personalised list,
    with ``control_share`` as its assigned share). ``control``: the arm the others are
    compared with (the first arm, or the control group's ``control``)."""
    from serving.assignment import CONTROL, CONTROL_GROUP, PERSONALISED
    from serving.attribution import WINDOW_DAYS, credited

    if name == CONTROL_GROUP:
        if not 0 < control_share < 1:
            raise ValueError("the universal control group is off (NBO_CONTROL_SHARE is 0): "
                             "there is nothing to report")
        shown = store.decisions_frame(None)
        shown.loc[shown["arm"] != CONTROL, "arm"] = PERSONALISED
        shares = {CONTROL: control_share, PERSONALISED: 1 - control_share}
        minimum, first = 1000, CONTROL
    else:
        experiment = store.experiment(name)
        shown = store.decisions_frame(name, experiment.started_at, experiment.stopped_at)
        shares, minimum = experiment.shares(), experiment.min_customers
        first = experiment.arms[0].name
    attributed = credited(store, shown, prices, window_days or WINDOW_DAYS)
    return report(name, attributed, shares, control or first, minimum, segments)


def served_report(engine: Any, store: Any, name: str, control: str | None,
                  control_share: float, window_days: float) -> dict[str, Any]:
    """An experiment's summary and report as JSON, with the serving engine's prices and
    segments (the admin API's and the console's); ``universal-control``: the control
    group."""
    from serving.assignment import CONTROL_GROUP
    from serving.attribution import Prices

    summary = {"name": name} if name == CONTROL_GROUP else store.experiment(name).summary()
    offers = engine.offers
    ids = np.asarray(engine.customers.ids, dtype=str)
    segments = pd.Series(engine.state.segment[:len(ids)], index=store.tokens(ids))
    made = experiment_report(store, name, Prices.of(offers.ids, offers.price, offers.margin),
                             control, control_share, window_days, segments)
    return {**summary, "report": made.as_json()}
