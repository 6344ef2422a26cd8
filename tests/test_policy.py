"""Request-time rules: each function alone, then a property over random shops and requests
that no served offer ever breaks a rule."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse
from store_backends import ERASURE_KEY

from features.columns import Stage
from features.config import LifecycleConfig
from features.ids import IdMap
from serving import policy
from serving.engine import Engine, PolicySettings, Request
from serving.offer_policy import Versioned, from_json
from serving.policy import Consent, Offers
from serving.store import Store
from training.calibration import Calibration, Curve
from training.data import TrainData
from training.models import create

NOW = datetime(2026, 6, 30, 12)
NOW_NS = int(np.datetime64(NOW, "ns").astype(np.int64))


def offers_frame(**columns: list) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"product_id": [f"p{i}" for i in range(n)], "title": [f"T{i}" for i in range(n)],
            "category": ["a"] * n}
    return pd.DataFrame(base | columns)


def table(**columns: list) -> Offers:
    frame = offers_frame(**columns)
    return Offers.from_frame(frame, pd.Index(frame["product_id"]))


def test_eligibility_checks_window_stock_channel_region_and_age() -> None:
    offers = table(
        valid_from=[None, NOW + timedelta(days=1), None, None, None, None, None],
        valid_to=[None, None, NOW - timedelta(days=1), None, None, None, None],
        stock=[None, None, None, 0, None, None, None],
        channels=["", "", "", "", "app;email", "", ""],
        region=["", "", "", "", "", "north", ""],
        min_age=[None, None, None, None, None, None, 18],
    )
    web = policy.eligible(offers, NOW_NS, "web", "north", 30)
    assert web.tolist() == [True, False, False, False, False, True, True]
    assert policy.eligible(offers, NOW_NS, "app", None, None).tolist() == [
        True, False, False, False, True, False, False]  # unknown region and age: excluded


def test_unknown_channel_names_in_the_offer_table_are_an_error() -> None:
    with pytest.raises(ValueError, match="unknown name"):
        table(channels=["web;fax"])


def test_sensitive_offers_need_explicit_consent() -> None:
    offers = table(sensitive=[False, True])
    assert policy.consented(offers, Consent(True, frozenset(), False)).tolist() == [True, False]
    assert policy.consented(offers, Consent(True, frozenset(), True)).tolist() == [True, True]


def test_stage_targeted_offers_only_in_their_stages() -> None:
    offers = table(lifecycle_stages=["", "new;prospect", "lapsed"])
    assert policy.in_stage(offers, Stage.new).tolist() == [True, True, False]
    assert policy.in_stage(offers, Stage.lapsed).tolist() == [True, False, True]


def test_exclusions_cover_returns_cart_and_repurchase_windows() -> None:
    offers = table(repurchase_days=[None, 30, 30, None, None])
    keep = policy.not_excluded(offers, bought=np.array([0, 1, 2]),
                               bought_days_ago=np.array([400.0, 10.0, 40.0]),
                               returned=np.array([3]), cart=np.array([4]))
    assert keep.tolist() == [False, False, True, False, False]


def test_offers_shown_often_without_a_click_rest() -> None:
    keep = policy.not_rested(4, shown=np.array([0, 1, 2]), times_shown=np.array([3, 3, 1]),
                             clicked=np.array([False, True, False]), max_impressions=3)
    assert keep.tolist() == [False, True, True, True]


def test_diversity_caps_each_category_counting_offers_already_placed() -> None:
    category = np.array([0, 0, 0, 1, 1, 2])
    order = np.array([0, 1, 2, 3, 4, 5])
    assert policy.diversify(order, category, 2, 10).tolist() == [0, 1, 3, 4, 5]
    assert policy.diversify(order, category, 2, 3).tolist() == [0, 1, 3]
    assert policy.diversify(order, category, 2, 10, taken=np.array([0])).tolist() == [
        0, 3, 4, 5]


# --- the property -----------------------------------------------------------------------

REGIONS = ["", "north", "south"]


@st.composite
def shops(draw: st.DrawFn) -> dict:
    n = draw(st.integers(3, 25))
    frame = offers_frame(
        category=draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n)),
        channels=draw(st.lists(st.sampled_from(["", "", "", "web", "email;app", "sms"]),
                               min_size=n, max_size=n)),
        region=draw(st.lists(st.sampled_from(["", "", "", *REGIONS[1:]]), min_size=n,
                             max_size=n)),
        min_age=draw(st.lists(st.sampled_from([None, None, None, 18]), min_size=n,
                              max_size=n)),
        sensitive=draw(st.lists(st.sampled_from([False, False, True]), min_size=n, max_size=n)),
        lifecycle_stages=draw(st.lists(st.sampled_from(["", "", "", "new", "active;at_risk"]),
                                       min_size=n, max_size=n)),
        repurchase_days=draw(st.lists(st.sampled_from([None, 10]), min_size=n, max_size=n)),
        stock=draw(st.lists(st.sampled_from([None, None, 5, 0]), min_size=n, max_size=n)),
        valid_to=draw(st.lists(st.sampled_from([None, None, NOW - timedelta(days=1)]),
                               min_size=n, max_size=n)),
    )
    customers = [f"c{i}" for i in range(draw(st.integers(1, 5)))]
    bought = draw(st.lists(st.tuples(st.sampled_from(customers), st.integers(0, n - 1),
                                     st.integers(1, 400)), max_size=30))
    returned = draw(st.lists(st.tuples(st.sampled_from(customers), st.integers(0, n - 1)),
                             max_size=5))
    consents = draw(st.lists(st.tuples(
        st.sampled_from(customers),
        st.sampled_from(["personalization", "email", "sms", "sensitive"]),
        st.booleans(), st.booleans()), max_size=10))
    request = {
        "customer": draw(st.sampled_from([*customers, "stranger"])),
        "channel": draw(st.sampled_from(["web", "app", "email", "web", "sms"])),
        "k": draw(st.integers(1, 10)),
        "cart": draw(st.lists(st.integers(0, n - 1), max_size=3)),
        "region": draw(st.sampled_from([None, "north", "south"])),
    }
    # impressions mostly of the asking customer, so the contact rule has offers to rest
    shown = [event for customer, item, action, times in draw(st.lists(st.tuples(
        st.sampled_from([request["customer"]] * 3 + customers), st.integers(0, n - 1),
        st.sampled_from(["impression", "impression", "impression", "click"]),
        st.integers(1, 3)), max_size=12))
        for event in [(customer, item, action)] * times]
    return {"offers": frame, "customers": customers, "bought": bought, "returned": returned,
            "shown": shown, "consents": consents, "request": request,
            "birth_year": draw(st.lists(st.one_of(st.none(), st.integers(1950, 2015)),
                                        min_size=len(customers), max_size=len(customers)))}


def build_engine(shop: dict, store: Store, settings: PolicySettings) -> Engine:
    offers, customers = shop["offers"], shop["customers"]
    ids = offers["product_id"]
    bought = pd.DataFrame([(c, ids[i], NOW - timedelta(days=d)) for c, i, d in shop["bought"]],
                          columns=["customer_id", "product_id", "last_purchase"])
    bought = bought.sort_values("last_purchase").drop_duplicates(
        ["customer_id", "product_id"], keep="last")
    first = bought.groupby("customer_id")["last_purchase"].min().reindex(customers)
    last = bought.groupby("customer_id")["last_purchase"].max().reindex(customers)
    profile = pd.DataFrame({
        "customer_id": customers, "region": ["north"] * len(customers),
        "birth_year": [np.nan if b is None else b for b in shop["birth_year"]],
        "first_purchase": first.to_numpy(), "last_purchase": last.to_numpy(),
        "usual_gap_days": np.nan, "segment": "s"})
    rows = IdMap(customers).index_of(bought["customer_id"])
    cols = IdMap(ids).index_of(bought["product_id"])
    matrix = sparse.csr_matrix((np.ones(len(bought), np.float32), (rows, cols)),
                               shape=(len(customers), len(ids)))
    data = TrainData(IdMap(customers), IdMap(ids), matrix,
                     pd.DataFrame(index=customers), pd.DataFrame(index=ids))
    model = create("itemknn", {"neighbours": 5}).fit(data)
    tables = {
        "offers": offers, "customers": profile, "bought": bought,
        "returned": pd.DataFrame([(c, ids[i]) for c, i in shop["returned"]],
                                 columns=["customer_id", "product_id"]),
        "last_visit": pd.DataFrame(columns=["customer_id", "product_id", "position"]),
    }
    return Engine(model, "1", tables, LifecycleConfig(), store, settings)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shop=shops())
def test_no_served_offer_ever_breaks_a_rule(shop: dict) -> None:
    settings_ = PolicySettings(max_impressions=2, max_per_category=2)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'store.db'}", ERASURE_KEY)
        try:
            check_request(shop, store, settings_)
        finally:
            store.close()


def check_request(shop: dict, store: Store, settings_: PolicySettings,
                  offer_policy: Versioned | None = None) -> Engine:
    engine = build_engine(shop, store, settings_)
    if offer_policy is not None:
        engine.use_policy(offer_policy)
    offers, req = shop["offers"], shop["request"]
    ids = offers["product_id"]
    for customer, purpose, granted, doi in shop["consents"]:
        store.set_consents(customer, {purpose: (granted, doi)}, "test", NOW)
    store.append_feedback([{"customer_id": c, "product_id": ids[i], "action": a,
                            "timestamp": NOW - timedelta(days=1)} for c, i, a in shop["shown"]],
                          NOW)
    consent = store.consent(req["customer"], settings_.personalization_default)
    cart = [ids[i] for i in req["cart"]]
    ranking = engine.rank(Request(req["customer"], req["channel"], req["k"], NOW, cart=cart,
                                  region=req["region"]), NOW, consent)
    served = [o.product_id for o in ranking.offers]
    assert len(served) == len(set(served)) and len(served) <= req["k"]
    if req["channel"] in ("email", "sms", "push", "post") and not consent.allows_channel(
            req["channel"]):
        assert served == []
    known = req["customer"] in shop["customers"]
    region = req["region"] or ("north" if known else None)
    row = shop["customers"].index(req["customer"]) if known else -1
    birth = shop["birth_year"][row] if known else None
    stage = ranking.lifecycle_stage
    table_ = offers.set_index("product_id")
    categories: dict[str, int] = {}
    for pid in served:
        o = table_.loc[pid]
        index = int(pid[1:])
        assert pd.isna(o["valid_to"]) or o["valid_to"] >= NOW, "validity"
        assert pd.isna(o["stock"]) or o["stock"] > 0, "stock"
        assert o["channels"] == "" or req["channel"] in o["channels"].split(";"), "channel"
        assert o["region"] == "" or o["region"] == region, "region"
        assert pd.isna(o["min_age"]) or (birth is not None and NOW.year - birth >= 18), "age"
        assert not o["sensitive"] or consent.sensitive, "sensitive"
        assert o["lifecycle_stages"] == "" or stage in o["lifecycle_stages"].split(";"), "stage"
        assert pid not in cart, "cart"
        assert (req["customer"], index) not in shop["returned"], "returned"
        for customer, item, days in shop["bought"]:
            if customer == req["customer"] and item == index:
                assert not pd.isna(o["repurchase_days"]) and days >= o["repurchase_days"]
        impressions = sum(1 for c, i, a in shop["shown"]
                          if c == req["customer"] and i == index and a == "impression")
        clicked = any(c == req["customer"] and i == index and a == "click"
                      for c, i, a in shop["shown"])
        assert impressions < settings_.max_impressions or clicked, "contact"
        categories[o["category"]] = categories.get(o["category"], 0) + 1
    fallbacks = offer_policy.policy.fallbacks.rank if offer_policy is not None else []
    capped = [pid for pid in served if pid not in fallbacks]  # fallbacks skip the cap
    assert all(sum(table_.loc[pid, "category"] == cat for pid in capped)
               <= settings_.max_per_category for cat in categories)
    return engine


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shop=shops(), data=st.data())
def test_no_served_offer_ever_breaks_the_offer_policy(shop: dict, data: st.DataObject) -> None:
    """Every rule still holds under a drawn policy, and no answer breaks a suppression, a
    campaign window or a budget, over many requests; lists never exceed k. The policy names
    mostly offers that are served without it, so that it has something to hold back."""
    people = [*shop["customers"], "stranger"] * 3
    ks = [data.draw(st.integers(1, 10)) for _ in people]
    everyone = Consent(True, frozenset(), False)

    def serve(engine: Engine) -> list[str]:
        served = []
        for customer, k in zip(people, ks, strict=True):
            offers = engine.rank(Request(customer, "web", k, NOW), NOW, everyone).offers
            assert len(offers) <= k
            served += [o.product_id for o in offers]
        return served

    # a drawn propensity curve: non-increasing, with plateaus where ties must keep the order
    steps = data.draw(st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.3]), min_size=1, max_size=8))
    curve = Calibration(Curve(np.cumsum([0.01, *steps])[::-1].copy(), "holdout", 1))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'plain.db'}", ERASURE_KEY)
        try:
            served_plain = serve(build_engine(shop, store, PolicySettings()))
            neutral = build_engine(shop, store, PolicySettings())
            neutral.calibration = curve
            neutral.use_policy(from_json({"channels": {"web": {"a": 1.0, "b": 0.0}}}))
            assert serve(neutral) == served_plain, "a=1, b=0 keeps the model's order"
        finally:
            store.close()
    plain = sorted(set(served_plain))
    ids = plain or list(shop["offers"]["product_id"])
    some = st.sets(st.sampled_from(ids), max_size=min(4, len(ids))).map(sorted)
    named = st.sets(st.sampled_from(ids), min_size=1, max_size=min(4, len(ids))).map(sorted)
    windows = st.sampled_from([(-2, 2), (1, 5), (-5, -1), (None, None)])
    campaigns = [{"name": f"c{n}", "offers": offers, "weight": weight,
                  **({} if start is None else {"start": NOW + timedelta(days=start),
                                               "end": NOW + timedelta(days=end)})}
                 for n, (offers, (start, end), weight) in enumerate(data.draw(st.lists(
                     st.tuples(named, windows, st.sampled_from([0.5, 1.0, 9.0])),
                     max_size=2)))]
    budgets = [{"name": f"b{n}", "offers": offers, "limit": limit, "period": "day"}
               for n, (offers, limit) in enumerate(data.draw(st.lists(
                   st.tuples(named, st.integers(1, 3)), max_size=2)))]
    offer_policy = from_json({
        "channels": {ch: {"a": data.draw(st.sampled_from([0.5, 1.0, 2.0])),
                          "b": data.draw(st.sampled_from([0.0, 1.0]))}
                     for ch in ("web", "app", "email", "sms")},
        "offers": {pid: {"suppressed": True} for pid in data.draw(some)}
        | {pid: {"weight": 4.0} for pid in data.draw(some)},
        "campaigns": campaigns, "budgets": budgets, "fallbacks": {"rank": data.draw(some)}})
    suppressed = {pid for pid, rule in offer_policy.policy.offers.items() if rule.suppressed}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'store.db'}", ERASURE_KEY)
        try:  # every rule, then the policy's own limits over many requests
            check_request(shop, store, PolicySettings(max_impressions=2, max_per_category=2),
                          offer_policy)
            served = serve(check_request(shop, store, PolicySettings(), offer_policy))
        finally:
            store.close()
    assert not suppressed & set(served), "suppression"
    running: set[str] = set()  # an offer of several campaigns is served while one runs
    for campaign in offer_policy.policy.campaigns:
        if campaign.start is None or campaign.start <= NOW < campaign.end:  # type: ignore[operator]
            running |= set(campaign.offers)
    for campaign in offer_policy.policy.campaigns:
        assert not (set(campaign.offers) - running) & set(served), "campaign window"
    for budget in offer_policy.policy.budgets:
        assert sum(pid in budget.offers for pid in served) <= budget.limit, "budget"
