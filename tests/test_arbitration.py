"""Arbitration and the offer policy: priority = propensity^a * value^b * weight * context
weight, calibrated propensity, the policy file, suppressions, campaign windows, fallback
offers."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event as sqlalchemy_event
from store_backends import ERASURE_KEY

from features.snapshot import load_snapshot
from serving.engine import Engine, PolicySettings, Request
from serving.offer_policy import PolicyError, from_json, parse
from serving.policy import Consent
from serving.store import Store
from training.calibration import Calibration, Curve, from_feedback

EVERYTHING = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)
# a curve with plateaus: ties in propensity must keep the model's order
STEPPED = Calibration(Curve(np.array([0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.05, 0.0]), "holdout", 9))


@pytest.fixture
def engine(model_dir: Path, tmp_path: Path) -> Engine:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    engine = Engine.load(model_dir, "1", store, PolicySettings())
    engine.calibration = STEPPED
    return engine


@pytest.fixture
def now(snapshot_dir: Path):  # type: ignore[no-untyped-def]
    return load_snapshot(snapshot_dir).now.to_pydatetime()


def ids(engine: Engine, customer: str, now, **request) -> list[str]:  # type: ignore[no-untyped-def]
    return [o.product_id for o in engine.rank(Request(customer, **request), now,
                                              EVERYTHING).offers]


def test_a_neutral_policy_keeps_the_models_order_exactly(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customers = [str(c) for c in engine.customers.names[::40][:25]] + ["someone-new"]
    before = {c: ids(engine, c, now, k=20) for c in customers}
    engine.use_policy(from_json({"channels": {"web": {"a": 1.0, "b": 0.0}}}))
    assert {c: ids(engine, c, now, k=20) for c in customers} == before
    engine.use_policy(from_json({"channels": {"web": {"a": 1.0, "b": 1.0}}}))
    assert {c: ids(engine, c, now, k=20) for c in customers} != before  # margins reorder


def test_priority_is_the_product_of_its_components(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customer = str(engine.customers.names[3])
    plain = ids(engine, customer, now)
    boosted, valued = plain[4], plain[7]
    category = str(engine.offers.categories[engine.offers.category[
        engine.items.row(plain[6])]])
    engine.use_policy(from_json({
        "version": "spring-1", "value": "price_margin",
        "channels": {"web": {"a": 1.0, "b": 0.5}},
        "offers": {boosted: {"weight": 50.0}, valued: {"value": 1e6}},
        "context": [{"channel": "web", "category": category, "weight": 3.0}]}))
    ranking = engine.rank(Request(customer, explain=True), now, EVERYTHING)
    assert ranking.policy_version == "spring-1"
    for offer in ranking.offers:
        c = offer.components
        assert c is not None and offer.priority is not None
        assert offer.priority == pytest.approx(
            c["propensity"] * c["value"] ** 0.5 * c["weight"] * c["context_weight"], rel=1e-6)
    priorities = [o.priority for o in ranking.offers]
    assert priorities == sorted(priorities, reverse=True)
    by_id = {o.product_id: o for o in ranking.offers}
    assert by_id[boosted].components["weight"] == 50.0  # type: ignore[index]
    assert by_id[valued].components["value"] == 1e6  # type: ignore[index]
    assert ranking.offers[0].product_id in (boosted, valued)
    without = engine.rank(Request(customer), now, EVERYTHING).offers[0]
    assert without.priority is None and without.components is None  # only when asked


def test_a_catalogues_best_offers_and_their_counts_are_found_whatever_the_row_holds() -> None:
    from serving.arbitration import _sorted_above_cap, above_cap

    rng = np.random.default_rng(7)
    n = 4053
    plain = rng.normal(size=(6, n))
    tied = np.round(rng.normal(size=(6, n)), 1)  # ties across the cap's last place
    infinite = rng.normal(size=(6, n))
    infinite[rng.random((6, n)) < 0.05] = np.inf
    infinite[rng.random((6, n)) < 0.05] = -np.inf
    zeros = np.where(rng.random((6, n)) < 0.5, 0.0, -0.0)  # -0.0 ties with 0.0
    sampled = np.zeros((2, n))
    sampled[:, ::n // 256] = 1.0  # the strided sample holds all of the best: it guesses high
    with_nan = rng.normal(size=(3, n))
    with_nan[1, 17] = np.nan
    scores = np.concatenate([plain, tied, infinite, zeros, sampled, with_nan])
    for cap in (1, 99, 400, n - 1, n):
        row, column, counts = above_cap(scores, cap)
        found = {(r, c): k for r, c, k in zip(row.tolist(), column.tolist(), counts.tolist(),
                                              strict=True)}
        assert len(found) == len(row)
        for r in range(len(scores)):
            if r == len(scores) - 2:  # the row with a NaN: numpy's order, as before
                expected = _sorted_above_cap(scores[r:r + 1], min(cap, n))
                assert {c: k for (q, c), k in found.items() if q == r} == dict(
                    zip(expected[1].tolist(), expected[2].tolist(), strict=True))
                continue
            ordered = np.sort(scores[r])
            higher = n - np.searchsorted(ordered, scores[r], side="right")
            assert {c: k for (q, c), k in found.items() if q == r} == {
                c: int(k) for c, k in enumerate(higher) if k < cap}, (r, cap)


def test_an_offers_rank_counts_the_offers_scoring_higher_ties_sharing_the_best() -> None:
    from serving.arbitration import higher

    assert higher(np.array([0.5, 0.9, 0.5, 0.1, 0.9])).tolist() == [2, 0, 2, 4, 0]
    rng = np.random.default_rng(2)
    for _ in range(200):
        scores = rng.integers(0, 5, int(rng.integers(1, 50))).astype(float)
        counts = [int((scores > s).sum()) for s in scores]
        assert higher(scores).tolist() == counts
        cap = int(rng.integers(0, len(scores) + 2))
        assert higher(scores, cap).tolist() == [min(c, cap) for c in counts]


def test_suppressed_offers_and_campaigns_out_of_their_window_are_never_served(
        engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customer = str(engine.customers.names[5])
    plain = ids(engine, customer, now)
    category = str(engine.offers.categories[engine.offers.category[engine.items.row(plain[1])]])
    engine.use_policy(from_json({
        "offers": {plain[0]: {"suppressed": True}},
        "campaigns": [{"name": "later", "offers": [plain[2]], "start": now + timedelta(days=3),
                       "end": now + timedelta(days=10), "weight": 100.0},
                      {"name": "cat", "categories": [category], "end": now - timedelta(days=1)}]}))
    ranking = engine.rank(Request(customer, k=30), now, EVERYTHING)
    served = [o.product_id for o in ranking.offers]
    names = engine.offers.ids
    in_category = set(names[engine.offers.category == list(engine.offers.categories)
                            .index(category)])
    assert plain[0] not in served and plain[2] not in served
    assert not in_category & set(served)
    assert ranking.removed["policy"] >= 2
    later = engine.rank(Request(customer, k=30), now + timedelta(days=4), EVERYTHING)
    assert later.offers[0].product_id == plain[2]  # running, and weighed 100 times


def test_fallback_offers_fill_a_short_list_through_the_rules(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customer = str(engine.customers.names[8])
    bought = engine.state.purchases(engine.state.row_of(customer), 0)[0]
    allowed = engine.prepare(Request(customer), now, EVERYTHING).allowed()
    assert len(bought) and not allowed[bought].any()  # what was bought is excluded
    one_category = engine.offers.category == engine.offers.category[
        engine.items.row(ids(engine, customer, now)[0])]
    keep = [str(p) for p in engine.offers.ids[one_category & allowed]][:6]
    assert len(keep) == 6
    everything_else = [str(p) for p in engine.offers.ids if str(p) not in keep]
    fallback = [str(engine.offers.ids[bought[0]]), *keep[::-1]]
    engine.use_policy(from_json({"offers": {p: {"suppressed": True} for p in everything_else},
                                 "fallbacks": {"rank": fallback}}))
    ranking = engine.rank(Request(customer, k=10), now, EVERYTHING)
    served = [o.product_id for o in ranking.offers]
    cap = engine.settings.max_per_category
    # the category cap, then the fallback offers not served yet, in the policy's order
    assert len(served) == 6 and cap < 6
    assert served[cap:] == [p for p in keep[::-1] if p not in served[:cap]]
    assert [o.reason for o in ranking.offers[cap:]] == ["featured offer"] * (6 - cap)
    assert str(engine.offers.ids[bought[0]]) not in served  # still through the rules


def test_an_empty_newsletter_block_gets_the_policys_fallback(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customer = next(str(c) for c in engine.customers.names
                    if not len(engine.state.visited(engine.state.row_of(str(c)))))
    engine.store.set_consents(customer, {"email": (True, True)}, "test", now)
    assert not engine.newsletter([customer], ("last_visit",), now)[0].blocks
    guide = "guide-garden"
    engine.use_policy(from_json({"fallbacks": {"blocks": {"last_visit": [guide]}}}))
    blocks = engine.newsletter([customer], ("last_visit",), now)[0].blocks
    assert [(b.product_id, b.reason) for b in blocks] == [(guide, "featured offer")]


def test_a_policy_naming_offers_the_catalogue_lacks_is_refused_and_the_old_one_stays(
        engine: Engine) -> None:
    engine.use_policy(from_json({"version": "good"}))
    with pytest.raises(PolicyError, match=r"not in the served model's catalogue.*nope"):
        engine.use_policy(from_json({"offers": {"nope": {"weight": 2}}}))
    with pytest.raises(PolicyError, match=r"unknown categories.*imaginary"):
        engine.use_policy(from_json({"categories": {"imaginary": {"weight": 2}}}))
    assert engine.arbiter.version == "good"


def test_policy_errors_name_the_field_and_its_line() -> None:
    text = ("version: v1\n"
            "channels:\n"
            "  email:\n"
            "    a: 1\n"
            "    b: -2\n"
            "offers:\n"
            "  p00001:\n"
            "    weight: heavy\n")
    with pytest.raises(PolicyError) as caught:
        parse(text, "policy.yaml")
    message = str(caught.value)
    assert "policy.yaml: channels.email.b (line 5)" in message
    assert "policy.yaml: offers.p00001.weight (line 8)" in message
    with pytest.raises(PolicyError, match="colour"):
        parse("colour: red\n")
    with pytest.raises(PolicyError, match="ends before it starts"):
        parse("campaigns:\n  - {name: x, offers: [a], start: 2026-02-01, end: 2026-01-01}\n")
    assert parse("").version.startswith("sha256:")
    assert parse("version: v1\n").version == "v1"


def test_a_batchs_priorities_are_each_customers_own_to_the_bit(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    """The newsletter's priority matrix works out the offers past the curve's last rank
    once per offer: every row must still be what one request gives, with priors, a
    response rate of an offer's own, context by stage, a running campaign and ties."""
    offers = [str(o) for o in engine.offers.ids]
    category = str(engine.offers.categories[engine.offers.category[3]])
    engine.use_policy(from_json({
        "value": "price_margin", "channels": {"email": {"a": 0.7, "b": 0.3}},
        "offers": {offers[1]: {"propensity": 0.35}, offers[2]: {"propensity": 0.01},
                   offers[5]: {"weight": 3.0}},
        "context": [{"channel": "email", "stage": "lapsed", "category": category,
                     "weight": 2.5}, {"channel": "email", "category": category, "weight": 1.5}],
        "campaigns": [{"name": "now", "offers": [offers[6]], "weight": 4.0}]}))
    arbiter = engine.arbiter
    arbiter.calibration = Calibration(STEPPED.default, {"email": Curve(
        np.array([0.4, 0.3, 0.25, 0.1]), "feedback", 500)}, {"email": {offers[2]: 2.0}})
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 40, (12, len(offers))).astype(np.float32)  # many ties
    scores[:, 1] = scores[:, 2] = 50  # the priored offers at the top of every row
    scores[::2, 5] = scores[1::2, 6] = 45  # and the weighted ones near it
    candidates = rng.random(scores.shape) > 0.2
    candidates[0, :3] = True
    now_ns = pd.Timestamp(now).value
    first = arbiter.priorities(scores[0], candidates[0], "email", "active", now_ns)
    # a prior stands at any rank; an offer with a response rate of its own has no prior
    assert first.components["propensity"][1] == 0.35
    assert first.components["propensity"][2] > 0.01
    for stages in (["active"] * 12, ["lapsed", "active", "new"] * 4):
        batch = arbiter.priority_rows(scores, candidates, "email", stages, now_ns)
        alone = np.stack([arbiter.priorities(scores[r], candidates[r], "email", stages[r],
                                             now_ns).priority for r in range(12)])
        np.testing.assert_array_equal(batch, alone)
        assert len(np.unique(batch)) > 20


def test_feedback_calibrates_a_channel_by_position_and_offer() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for n in range(3000):
        position = int(rng.integers(1, 11))
        product = "star" if n % 10 == 0 else f"p{n % 7}"
        rate = 0.5 if product == "star" else 0.3 / position
        rows.append({"customer_id": f"c{n}", "product_id": product, "action": "impression",
                     "position": position, "channel": "email", "request_id": f"r{n}",
                     "timestamp": pd.Timestamp("2026-01-01")})
        if rng.random() < rate:
            rows.append({**rows[-1], "action": "click"})
    curves, offers = from_feedback(pd.DataFrame(rows))
    assert set(curves) == {"email"}
    curve = curves["email"].by_rank
    assert (np.diff(curve) <= 1e-12).all() and curve[0] > 2 * curve[9]
    assert offers["email"]["star"] > 1.5 > offers["email"]["p1"]
    calibration = Calibration(Curve(np.ones(3), "holdout", 1), curves, offers)
    assert calibration.curve("web").source == "holdout"
    got = calibration.propensity("email", np.array([0, 0]), np.array(["star", "p1"]))
    assert got[0] > got[1]


def test_the_policy_reference_names_every_setting_and_the_example_validates() -> None:
    from serving.offer_policy import (
        Campaign,
        CategoryRule,
        Contact,
        ContextWeight,
        Exponents,
        Fallbacks,
        OfferPolicy,
        OfferRule,
        QuietHours,
        Trigger,
        load,
    )

    docs = Path(__file__).parents[1] / "docs"
    text = (docs / "offer-policy.md").read_text()
    for model in (OfferPolicy, Exponents, OfferRule, CategoryRule, ContextWeight, Campaign,
                  Fallbacks, Contact, QuietHours, Trigger):
        for name in model.model_fields:  # in code quotes, alone or in a dotted path
            assert re.search(rf"`[^`\s]*\b{name}\b[^`\s]*`", text), (model.__name__, name)
    assert load(docs.parent / "nbo" / "jobs" / "demo_policy.yaml").version == "example-1"


def test_an_offer_is_served_no_more_often_than_its_budget_allows(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customers = [str(c) for c in engine.customers.names[:60]]
    firsts = [ids(engine, c, now)[0] for c in customers]
    top = max(set(firsts), key=firsts.count)
    assert firsts.count(top) >= 5
    engine.use_policy(from_json({"budgets": [{"name": "top-daily", "offers": [top],
                                              "limit": 3, "period": "day"}]}))
    served = sum(top in ids(engine, c, now) for c in customers)
    assert served == 3
    ranking = engine.rank(Request(customers[firsts.index(top)]), now, EVERYTHING)
    assert top not in [o.product_id for o in ranking.offers]
    assert ranking.removed["policy"] >= 1  # used up: held back like a suppression
    tomorrow = now + timedelta(days=1)
    assert sum(top in ids(engine, c, tomorrow) for c in customers) == 3  # a new day's budget


def test_a_budget_is_never_overspent_by_concurrent_stores(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    stores = [Store(url, ERASURE_KEY) for _ in range(2)]  # two workers' connections
    wanted = [[("cap", "total", 25), ("other", "total", 1000)]]

    def take(n: int) -> bool:
        return stores[n % 2].spend(wanted)[0]

    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(take, range(120)))
    assert sum(taken) == 25
    for store in stores:
        store.give_back()  # what each holds in reserve of "other"
    assert stores[0].budget_used([("cap", "total"), ("other", "total")]) == {
        ("cap", "total"): 25, ("other", "total"): 25}  # all or none per offer


def test_workers_take_budget_impressions_in_blocks_and_give_back_what_they_hold(
        tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    stores = [Store(url, ERASURE_KEY) for _ in range(2)]
    wanted = [[("daily", "2026-12-06", 500)]]
    assert stores[0].spend(wanted) == [True]
    assert stores[0].budget_used([("daily", "2026-12-06")]) == {("daily", "2026-12-06"): 20}
    assert stores[0].budget_used([("daily", "2026-12-06")], own_reserve_free=True) == {
        ("daily", "2026-12-06"): 1}  # served one, holds 19 it may serve
    writes = []
    sqlalchemy_event.listen(stores[1].counts, "before_cursor_execute",
                            lambda *args: writes.append(args[2].split()[0]))
    assert all(stores[1].spend(wanted) for _ in range(40))
    assert writes.count("UPDATE") + writes.count("INSERT") <= 2  # two blocks for 40

    def take(n: int) -> bool:
        return stores[n % 2].spend(wanted)[0]

    with ThreadPoolExecutor(8) as pool:
        taken = 41 + sum(pool.map(take, range(1000)))  # as many calls per store as the limit
    assert taken == 500  # a block shrinks to what is needed as the limit nears
    for store in stores:
        store.give_back()
    assert stores[1].budget_used([("daily", "2026-12-06")]) == {("daily", "2026-12-06"): 500}
    stores[0].spend([[("weekly", "2026-W49", 1000)]] * 3)
    stores[0].close()  # a stopping worker gives back what it holds
    assert stores[1].budget_used([("weekly", "2026-W49")]) == {("weekly", "2026-W49"): 3}


def test_a_lapsed_customer_gets_the_win_back_coupon_when_it_is_worth_more(engine: Engine,
                                                                          now) -> None:  # type: ignore[no-untyped-def]
    from serving.offer_policy import load

    # a propensity curve as the split of a 3,000-customer shop gives the blend
    engine.calibration = Calibration(Curve(np.array(
        [0.134, 0.084, 0.078, 0.056, 0.037, 0.037, 0.036, 0.031, 0.029, 0.024, 0.015]),
        "holdout", 550))
    now_ns = int(np.datetime64(now, "ns").astype(np.int64))
    lapsed = [str(c) for c in engine.customers.names
              if engine.state.stage(engine.state.row_of(str(c)), now_ns) == "lapsed"][:10]
    assert lapsed
    assert all(ids(engine, c, now)[0] != "winback15" for c in lapsed)  # relevance alone
    engine.use_policy(load(Path(__file__).parents[1] / "nbo" / "jobs" / "demo_policy.yaml"))
    for customer in lapsed:
        first = engine.rank(Request(customer, explain=True), now, EVERYTHING).offers[0]
        assert first.product_id == "winback15", customer
        assert first.components == {"propensity": 0.08, "value": 12.0, "weight": 1.0,
                                    "context_weight": 3.0}


def test_the_policys_contact_cap_overrides_the_services(engine: Engine, now) -> None:  # type: ignore[no-untyped-def]
    customer = str(engine.customers.names[5])
    top = ids(engine, customer, now)[0]
    engine.store.append_feedback([{"customer_id": customer, "product_id": top,
                                   "action": "impression", "timestamp": now - timedelta(days=3),
                                   "request_id": f"r{n}"} for n in range(2)], now)
    assert ids(engine, customer, now)[0] == top  # twice is under the service's 3
    engine.use_policy(from_json({"contact": {"max_impressions": 2}}))
    assert top not in ids(engine, customer, now)
    engine.use_policy(from_json({"contact": {"max_impressions": 2,
                                             "impression_window_days": 2}}))
    assert ids(engine, customer, now)[0] == top  # both were shown before the window
    engine.use_policy(from_json({}))
    assert ids(engine, customer, now)[0] == top and engine.settings == PolicySettings()


def test_a_worker_serves_what_it_holds_after_the_store_counts_the_budget_used_up(
        engine: Engine, now, model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    customers = [str(c) for c in engine.customers.names[:60]]
    firsts = [ids(engine, c, now)[0] for c in customers]
    top = max(set(firsts), key=firsts.count)
    buyer = customers[firsts.index(top)]
    capped = from_json({"budgets": [{"name": "top", "offers": [top], "limit": 400}]})
    engine.use_policy(capped)
    assert ids(engine, buyer, now)[0] == top  # took a block of 20, served one
    other = Engine.load(model_dir, "1", Store(f"sqlite:///{tmp_path / 'store.db'}",
                                              ERASURE_KEY), PolicySettings())
    other.use_policy(capped)
    assert other.store.spend([[("top", "total", 400)]] * 380) == [True] * 380  # the rest
    engine.budgets_changed()
    assert top not in ids(other, buyer, now)  # used up as far as the store can tell
    assert ids(engine, buyer, now)[0] == top  # the 19 this worker holds are its to serve
