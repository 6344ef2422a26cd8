"""Live state over the service's HTTP API: events and feedback posted now change the next
answer (exclusions, stage, rest, history, reasons), bad events are answered and nothing is
stored, retries are stored once, and an erasure in one engine holds in another on one store."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from service_client import AUTH
from starlette.testclient import TestClient
from store_backends import BOTH_DATABASES, ERASURE_KEY

from features.config import EventWeights
from features.ids import IdMap
from features.snapshot import load_snapshot
from features.weights import event_contributions
from serving.engine import Engine, PolicySettings, Request
from serving.live import activity
from serving.policy import Consent
from serving.store import NO_TIME, Exposure, LiveEvent, Store

EVERYTHING = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)


def rank(client: TestClient, customer: str, **context: object) -> dict:
    body: dict = {"customer_id": customer, "k": 10}
    if context:
        body["context"] = context
    response = client.post("/rank", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


def offered(ranking: dict) -> list[str]:
    return [o["product_id"] for o in ranking["offers"]]


def post(client: TestClient, path: str, events: list[dict]) -> dict:
    response = client.post(path, json={"events": events}, headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


@BOTH_DATABASES
def test_a_purchase_posted_now_is_not_offered_again_and_moves_the_stage(
        client: TestClient, people: dict) -> None:
    buyer = people["buyer"]
    top = offered(rank(client, buyer))[0]
    newcomer = rank(client, "walk-in")
    assert newcomer["lifecycle_stage"] == "prospect"
    bought = newcomer["offers"][0]["product_id"]
    stored = post(client, "/events", [
        {"event_id": "e1", "customer_id": buyer, "product_id": top, "event_type": "purchase"},
        {"event_id": "e2", "customer_id": "walk-in", "product_id": bought,
         "event_type": "purchase", "quantity": 2, "order_id": "o-1"}])
    assert (stored["stored"], stored["duplicates"]) == (2, 0)
    assert top not in offered(rank(client, buyer))  # no second car
    after = rank(client, "walk-in")
    assert after["lifecycle_stage"] == "new" and bought not in offered(after)
    assert after["fallback"] is None  # ranked from what they bought


def test_returns_dismissals_and_conversions_take_effect_on_the_next_request(
        client: TestClient, people: dict) -> None:
    buyer = people["buyer"]
    first = rank(client, buyer)
    returned, dismissed, converted = offered(first)[:3]
    post(client, "/events", [{"event_id": "r1", "customer_id": buyer, "product_id": returned,
                              "event_type": "return"}])
    post(client, "/feedback", [
        {"customer_id": buyer, "product_id": dismissed, "action": "dismiss",
         "request_id": first["request_id"]},
        {"customer_id": buyer, "product_id": converted, "action": "conversion",
         "request_id": first["request_id"]}])
    again = offered(rank(client, buyer))
    assert returned not in again and dismissed not in again and converted not in again


def test_the_product_on_the_page_is_never_offered_and_counts_as_history(
        client: TestClient, people: dict) -> None:
    buyer = people["buyer"]
    plain = rank(client, buyer)
    page = plain["offers"][0]["product_id"]
    on_page = rank(client, buyer, product_id=page)
    assert page not in offered(on_page)
    scores = {o["product_id"]: o["score"] for o in plain["offers"]}
    assert any(scores.get(o["product_id"]) not in (None, o["score"])
               for o in on_page["offers"])  # the view moved the customer's scores


def test_a_bad_event_is_answered_with_its_index_and_nothing_of_the_call_is_stored(
        client: TestClient, people: dict) -> None:
    buyer = people["buyer"]
    product = offered(rank(client, buyer))[0]
    good = {"event_id": "g1", "customer_id": buyer, "product_id": product,
            "event_type": "view"}
    call = [good, {**good, "event_id": "b1", "event_type": "liked"},
            {**good, "event_id": "b2", "product_id": "no-such-product"},
            {**good, "event_id": "b3", "event_type": "rating", "rating": 9},
            {**good, "event_id": "b4", "timestamp": "last tuesday"}]
    refused = client.post("/events", json={"events": call}, headers=AUTH)
    assert refused.status_code == 400
    assert [(b["index"], b["event_id"], b["reason"]) for b in refused.json()["invalid"]] == [
        (1, "b1", "unknown event_type"), (2, "b2", "unknown product"),
        (3, "b3", "rating out of range"), (4, "b4", "bad timestamp")]
    assert post(client, "/events", [good])["stored"] == 1  # the good one was not stored
    retried = post(client, "/events", [good, good])
    assert (retried["stored"], retried["duplicates"]) == (0, 2)
    empty = client.post("/events", json={"events": []}, headers=AUTH)
    assert empty.status_code == 400


def test_reasons_say_what_the_customer_did_with_the_product(
        client: TestClient, model_dir: Path) -> None:
    import json

    product = json.loads((model_dir / "items.json").read_text())[3]
    post(client, "/events", [{"event_id": "c1", "customer_id": "cart-only",
                              "product_id": product, "event_type": "cart"}])
    reasons = [o["reason"] for o in rank(client, "cart-only")["offers"]]
    assert any(r.startswith("because you put in your cart ") for r in reasons), reasons
    assert not any("bought" in r or "looked at" in r for r in reasons), reasons


def test_every_reason_that_says_bought_names_a_purchase(model_dir: Path, snapshot_dir: Path,
                                                        tmp_path: Path) -> None:
    engine = Engine.load(model_dir, "1", Store(f"sqlite:///{tmp_path / 's.db'}", ERASURE_KEY),
                         PolicySettings())
    snapshot = load_snapshot(snapshot_dir)
    now = snapshot.now.to_pydatetime()
    said = 0
    for customer in engine.customers.names[:60]:
        row = engine.row_of(str(customer))
        bought = set(engine.offers.titles[engine.state.purchases(row, 0)[0]])
        for offer in engine.rank(Request(str(customer)), now, EVERYTHING).offers:
            if offer.reason.startswith("because you bought "):
                assert offer.reason.removeprefix("because you bought ") in bought
                said += 1
    assert said > 0


def test_an_erasure_through_one_engine_holds_in_another_on_the_same_store(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    """Two workers (or replicas) each hold an engine built before the erasure."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = Engine.load(model_dir, "1", Store(url, ERASURE_KEY), PolicySettings())
    second = Engine.load(model_dir, "1", Store(url, ERASURE_KEY), PolicySettings())
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    customer = str(first.customers.names[np.diff(first.model.matrix.indptr) > 2][0])
    assert second.rank(Request(customer), now, EVERYTHING).fallback is None
    held = first.forget(customer)
    first.store.erase(customer, "test", now, held)
    answer = second.rank(Request(customer), now, EVERYTHING)
    assert answer.fallback in ("popular", "popular_in_region")
    assert second.model.customers.row(customer) == -1  # and the second forgot them too
    third = Engine.load(model_dir, "1", Store(url, ERASURE_KEY), PolicySettings())  # a reload after
    assert third.model.customers.row(customer) == -1


def test_live_events_are_bounded_per_customer_and_cut_at_the_snapshot(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", ERASURE_KEY)
    engine = Engine.load(model_dir, "1", store, PolicySettings(live_events=3))
    now = engine.as_of + timedelta(days=1)
    products = [str(p) for p in engine.items.names[:6]]
    rows = [{"event_id": f"v{i}", "customer_id": "x", "product_id": p, "event_type": "view",
             "timestamp": now - timedelta(hours=6 - i), "quantity": 1, "rating": None,
             "order_id": None, "channel": None} for i, p in enumerate(products)]
    rows.append({**rows[0], "event_id": "old", "product_id": products[5],
                 "event_type": "purchase", "timestamp": engine.as_of - timedelta(days=1)})
    store.append_events(rows, now)
    live = store.live_events(["x"], engine.as_of, now, 3)["x"]
    assert [e.product_id for e in live] == products[5:2:-1]  # the newest three, no old one
    prepared = engine.prepare(Request("x"), now, EVERYTHING)
    assert sorted(engine.items.names[prepared.activity.seen]) == sorted(products[3:])
    assert len(prepared.activity.bought) == 0 and prepared.stage == "prospect"


def test_an_als_customer_with_live_history_gets_factors_solved_anew(
        model_dir: Path, tmp_path: Path) -> None:
    engine = Engine.load(model_dir, "1", Store(f"sqlite:///{tmp_path / 's.db'}", ERASURE_KEY),
                         PolicySettings())
    model = engine.model
    customer = str(model.customers.names[0])
    stored = model.matrix[0]
    same = model.score([customer], history=stored)[0]
    trained = model.score([customer])[0]
    # the exact least squares on the trained history comes back close to the trained factors
    assert np.corrcoef(same, trained)[0, 1] > 0.9
    moved = stored.copy().tolil()
    moved[0, int(np.argmin(trained))] = 5.0
    assert not np.allclose(model.score([customer], history=moved.tocsr())[0], same)


@pytest.mark.parametrize("limit", [0, 10_001])
def test_the_live_event_bound_is_checked(limit: int) -> None:
    from pydantic import ValidationError

    from features.settings import Settings

    with pytest.raises(ValidationError):
        Settings(live_events_per_customer=limit)


def test_posted_events_become_store_rows_with_every_column_as_given() -> None:
    from datetime import datetime

    from serving.ingest import event_rows
    from serving.schemas import EventIn

    now = datetime(2011, 12, 9, 12, 30)
    events = [EventIn(**e) for e in [
        {"event_id": "a", "customer_id": " c1 ", "product_id": "p1", "event_type": "Purchase",
         "timestamp": "2011-12-09T10:00:00+02:00", "quantity": 3, "order_id": "o-7",
         "channel": "email"},
        {"event_id": "b", "customer_id": "c2", "product_id": "p2", "event_type": "rating",
         "timestamp": 1323400000.0, "rating": 4.5},
        {"event_id": "c", "customer_id": "c3", "product_id": "p1", "event_type": "view"},
        {"event_id": "a", "customer_id": " c1 ", "product_id": "p1", "event_type": "Purchase",
         "timestamp": "2011-12-09T10:00:00+02:00", "quantity": 3, "order_id": "o-7",
         "channel": "email"}]]
    rows = event_rows(events, {"p1", "p2"}, now)
    assert rows == [
        {"event_id": "a", "customer_id": "c1", "product_id": "p1", "event_type": "purchase",
         "timestamp": datetime(2011, 12, 9, 8), "quantity": 3, "rating": None,
         "order_id": "o-7", "channel": "email"},
        {"event_id": "b", "customer_id": "c2", "product_id": "p2", "event_type": "rating",
         "timestamp": datetime(2011, 12, 9, 3, 6, 40), "quantity": 1, "rating": 4.5,
         "order_id": None, "channel": None},
        {"event_id": "c", "customer_id": "c3", "product_id": "p1", "event_type": "view",
         "timestamp": now, "quantity": 1, "rating": None, "order_id": None, "channel": None},
        {"event_id": "a", "customer_id": "c1", "product_id": "p1", "event_type": "purchase",
         "timestamp": datetime(2011, 12, 9, 8), "quantity": 3, "rating": None,
         "order_id": "o-7", "channel": "email"}]
    assert [type(row["timestamp"]) for row in rows] == [datetime] * 4
    assert [type(row["quantity"]) for row in rows] == [int] * 4


def _calls() -> tuple[list, list]:
    from serving.schemas import EventIn

    good = [EventIn(event_id=f"g{i}", customer_id=f" c{i} ", product_id="p1",
                    event_type="Purchase", timestamp="2011-12-09T10:00:00+02:00", quantity=2)
            for i in range(3)]
    bad = [EventIn(event_id="b0", customer_id="c1", product_id="p9", event_type="view"),
           EventIn(event_id="b1", customer_id="c1", product_id="p1", event_type="rating",
                   rating=7.0),
           EventIn(event_id="b2", customer_id="c1", product_id="p2", event_type="view")]
    return good, bad


def test_the_events_check_in_its_own_process_answers_as_the_contract_does() -> None:
    """The service's checker gives event_rows' rows, and its bad events with their index and
    reason, from a process of its own."""
    from datetime import datetime

    from serving.ingest import BadEvents, Checker, event_rows

    now = datetime(2011, 12, 9, 12, 30)
    good, bad = _calls()
    checker = Checker()
    try:
        checker.start()  # as the service does: ready once the process has done its imports
        assert not checker.ready
        waited = 0.0
        while not checker.ready and waited < 60:
            time.sleep(0.05)
            waited += 0.05
        assert checker.ready
        assert checker.rows(good, {"p1", "p2"}, now) == event_rows(good, {"p1", "p2"}, now)
        with pytest.raises(BadEvents) as caught:
            checker.rows(bad, {"p1", "p2"}, now)
        with pytest.raises(BadEvents) as alone:
            event_rows(bad, {"p1", "p2"}, now)
        assert caught.value.bad == alone.value.bad
        assert [b["index"] for b in caught.value.bad] == [0, 1]
        first = checker._child
        assert first is not None and first.pid != os.getpid() and first.poll() is None
    finally:
        checker.close()
    assert first.poll() is not None  # closing the pipe ends the process


def test_an_events_check_process_that_died_is_started_again() -> None:
    from datetime import datetime

    from serving.ingest import Checker

    now = datetime(2011, 12, 9, 12, 30)
    good, _ = _calls()
    checker = Checker()
    try:
        checker.rows(good, {"p1"}, now)
        first = checker._child
        assert first is not None
        first.kill()
        first.wait()
        assert [row["event_id"] for row in checker.rows(good, {"p1"}, now)] == ["g0", "g1", "g2"]
        assert checker._child is not None and checker._child.pid != first.pid
    finally:
        checker.close()


def test_a_customers_activity_weighs_each_event_as_the_features_job_does() -> None:
    """Every kind of event, a repeated purchase, an unknown product, a time with a zone, the
    feedback's conversion and dismissal and the request's session, page and cart: the sets
    are plain set arithmetic, the weights those of the features job's history."""
    items = IdMap([f"p{i}" for i in range(10)])
    now = datetime(2011, 12, 9, 12)
    hours = timedelta(hours=1)
    two_hours_east = timezone(timedelta(hours=2))
    given = [("p1", "purchase", now - 2 * hours, 3, None), ("p1", "purchase", now - hours, 1, None),
             ("p2", "return", now - 3 * hours, 1, None), ("p3", "cart", now - 4 * hours, 1, None),
             ("p4", "wishlist", now - 5 * hours, 1, None), ("p5", "view", now - 6 * hours, 1, None),
             ("p5", "view", now - 7 * hours, 1, None), ("p6", "rating", now - 8 * hours, 1, 1.0),
             ("p7", "rating", now - 9 * hours, 1, 5.0), ("new", "purchase", now, 1, None),
             # 17:00 two hours east of UTC is 15:00 UTC, 45 days ago
             ("p8", "view", datetime(2011, 10, 25, 17, tzinfo=two_hours_east), 1, None)]
    events = [LiveEvent("c", *event) for event in given]
    ns = pd.Timestamp(now).value
    half_hour_ago = ns - 1_800_000_000_000
    exposure = Exposure(["p9", "p3", "gone"], np.zeros(3, np.int64), np.zeros(3, bool),
                        np.array([False, True, True]),
                        np.array([half_hour_ago, NO_TIME, ns], dtype=np.int64))
    weights = EventWeights()
    act = activity(events, exposure, items, ns, weights, session=np.array([0]),
                   page=np.array([8]), cart=np.array([2]))

    assert act.bought.tolist() == [1, 9]
    assert act.bought_ns.tolist() == [pd.Timestamp(now - hours).value, half_hour_ago]
    assert act.returned.tolist() == [2]
    assert act.carted.tolist() == [2, 3]
    assert act.wished.tolist() == [4]
    assert act.seen.tolist() == [0, 5, 6, 7, 8]
    assert act.page.tolist() == [8]
    assert act.dismissed.tolist() == [3]

    known = pd.DataFrame(
        [(product, kind, pd.Timestamp(when).tz_convert(None) if when.tzinfo else when,
          quantity, np.nan if rating is None else rating)
         for product, kind, when, quantity, rating in given if product != "new"],
        columns=["product_id", "event_type", "timestamp", "quantity", "rating"])
    assert known.timestamp.iloc[-1] == pd.Timestamp(datetime(2011, 10, 25, 15))
    known["weight"] = event_contributions(known, pd.Timestamp(now), weights)
    extra = pd.DataFrame({"product_id": ["p9", "p0", "p8", "p2"],
                          "weight": [weights.purchase, weights.view, weights.view, weights.cart]})
    expected = pd.concat([known, extra]).groupby("product_id").weight.sum()
    assert [items.names[i] for i in act.added] == expected.index.tolist()
    np.testing.assert_allclose(act.weights, expected.to_numpy(), rtol=1e-12)
