"""The off-policy estimate of a challenger: its lists for the logged requests, and IPS and
SNIPS of what they would have earned (:mod:`serving.offpolicy`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from features.settings import Settings
    from serving.engine import Engine
    from serving.store import Store


def challenger_engine(folder: Path, version: str, settings: Settings, store: Store) -> Engine:
    """A registered model loaded as the service would serve it, with the store's offer
    policy, without exploration, taking nothing from budgets."""
    from serving.engine import Engine, PolicySettings
    from serving.explore import NO_EXPLORATION
    from serving.offer_policy import parse

    policy = replace(PolicySettings.from_settings(settings), exploration=NO_EXPLORATION)
    engine = Engine.load(folder, version, store, policy)
    held = store.current_policy()
    if held is not None:
        engine.use_policy(parse(held.text, f"stored policy {held.version}"))
    engine.spends = False
    return engine


def logged_lists(store: Store, since: datetime, until: datetime) -> pd.DataFrame:
    """The storefront lists the service logged from ``since`` to ``until`` (the universal
    control group's baseline left out), one row per offer shown, with what was credited to
    it (:mod:`serving.attribution`)."""
    from serving.assignment import CONTROL
    from serving.attribution import credited

    shown = store.decisions_frame(None, since, until, every=True)
    return credited(store, shown[(shown["endpoint"] == "rank")
                                 & (shown["arm"].fillna("") != CONTROL)])


def challenger_lists(engine: Engine, store: Store, logged: pd.DataFrame, k: int
                     ) -> pd.DataFrame:
    """The challenger's list for each logged request whose customer it knows, ranked at the
    request's moment with the customer's consent as the store holds it now."""
    from serving.engine import Request

    names = engine.customers.names
    known = dict(zip(store.tokens(names), names, strict=True))
    requests = logged.drop_duplicates("request_id")
    rows: list[tuple[str, str]] = []
    for request_id, token, channel, decided_at in zip(
            requests["request_id"], requests["token"], requests["channel"],
            requests["decided_at"], strict=True):
        customer = known.get(token)
        if customer is None:
            continue
        at = pd.Timestamp(decided_at).to_pydatetime()
        consent = store.consent(str(customer), engine.settings.personalization_default)
        ranking = engine.rank(Request(str(customer), str(channel), k, at), at, consent)
        rows.extend((str(request_id), offer.product_id) for offer in ranking.offers)
    return pd.DataFrame(rows, columns=["request_id", "product_id"])


def evaluate_policy(engine: Engine, store: Store, days: float, now: datetime, k: int
                    ) -> dict[str, Any]:
    """The challenger's estimates from the last ``days`` of logged storefront lists."""
    from dataclasses import asdict

    from serving.offpolicy import estimate

    logged = logged_lists(store, now - timedelta(days=days), now)
    if not len(logged):
        raise ValueError(f"the decision log holds no storefront list of the last {days:g} "
                         "days to estimate from")
    estimates, basis = estimate(logged, challenger_lists(engine, store, logged, k))
    return {"challenger_version": engine.version, "days": days, **basis,
            "estimates": [asdict(e) for e in estimates]}


def live_rates(store: Store, experiment: str) -> pd.DataFrame:
    """Per arm of a live experiment, the clicks and conversions per storefront list with
    their standard errors and the number of lists: what an off-policy estimate foretold."""
    from serving.attribution import credited

    shown = store.decisions_frame(experiment)
    lists = credited(store, shown[shown["endpoint"] == "rank"])
    per_list = lists.groupby(["arm", "request_id"])[["clicked", "converted"]].sum()
    rates = per_list.groupby("arm").agg(["mean", "sem", "count"])
    rates.columns = [f"{pair[0]}_per_list_{pair[1]}" for pair in rates.columns.to_list()]
    return rates
