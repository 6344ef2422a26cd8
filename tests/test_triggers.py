"""Timely triggers, tested with a clock: each pass is run at a moment the test gives, never
after a sleep. A cart left, a streak of views, a first purchase and a crossing into lapsed
become one decision each for a messaging channel, or none for a reason: bought meanwhile,
no consent, quiet hours (it waits), the message cap."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from service_client import ADMIN_AUTH, AUTH
from starlette.testclient import TestClient
from store_backends import BOTH_DATABASES, ERASURE_KEY

from features.settings import Settings
from features.snapshot import load_snapshot
from serving.decision_log import DecisionLog
from serving.engine import Engine, PolicySettings
from serving.metrics import METRICS
from serving.offer_policy import Contact, PolicyError, parse
from serving.service import webhook
from serving.state import NS_PER_DAY
from serving.store import Store
from serving.triggers import LEASE, Triggers, Webhook, birthdays, feed_page, signature

CART = "triggers: [{name: cart-reminder, when: cart_abandoned, channel: email, " \
       "after_minutes: 60, k: 2}]\n"


@pytest.fixture
def engine(model_dir: Path, tmp_path: Path) -> Engine:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", ERASURE_KEY)
    return Engine.load(model_dir, "1", store, PolicySettings())


@pytest.fixture
def now(snapshot_dir: Path) -> datetime:
    """A moment after the snapshot, 10:00 UTC."""
    moment: datetime = load_snapshot(snapshot_dir).now.to_pydatetime()
    return moment.replace(hour=10, minute=0, second=0, microsecond=0) + timedelta(days=1)


@pytest.fixture
def customer(engine: Engine) -> str:
    return str(engine.customers.names[3])


def policy(engine: Engine, text: str) -> None:
    engine.use_policy(parse(text))


def post(engine: Engine, customer: str, product: str, kind: str, at: datetime) -> None:
    key = f"{customer}|{product}|{kind}|{at.isoformat()}"
    engine.store.append_events([{
        "event_id": key, "customer_id": customer, "product_id": product, "event_type": kind,
        "timestamp": at, "quantity": 1, "rating": None, "order_id": None, "channel": "web"}],
        at)


def mail_consent(engine: Engine, customer: str, at: datetime) -> None:
    engine.store.set_consents(customer, {"email": (True, True)}, "test", at)


def feed(engine: Engine, dropped: bool = False) -> list[dict[str, Any]]:
    return feed_page(engine.store, 0, 1000, dropped)[0]


def product(engine: Engine, i: int) -> str:
    return str(engine.items.names[i])


def test_a_cart_left_for_the_configured_time_yields_exactly_one_decision(
        engine: Engine, now: datetime, customer: str) -> None:
    policy(engine, CART)
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    log = DecisionLog(engine.store, 90, lambda: now, flush_seconds=3600)
    triggers = Triggers(engine.store, log=log)
    assert triggers.run(engine, now + timedelta(minutes=59)).found == 1
    assert feed(engine, dropped=True) == []  # not due yet
    counted = METRICS.registry.get_sample_value("nbo_trigger_decisions_total", {"status": "sent"})
    assert triggers.run(engine, now + timedelta(minutes=61)).sent == 1
    assert METRICS.registry.get_sample_value(
        "nbo_trigger_decisions_total", {"status": "sent"}) == (counted or 0) + 1
    for later in (62, 120, 60 * 24):
        triggers.run(engine, now + timedelta(minutes=later))
    sent = feed(engine, dropped=True)
    assert len(sent) == 1, sent
    decision = sent[0]
    assert (decision["customer_id"], decision["channel"], decision["trigger"],
            decision["status"]) == (customer, "email", "cart-reminder", "sent")
    assert decision["subject"] == [product(engine, 7)]
    assert 1 <= len(decision["offers"]) <= 2 and decision["policy_version"]
    assert decision["due_at"] == (now + timedelta(minutes=60)).isoformat()
    assert log.flush() == 1
    [logged] = engine.store.decisions_of(customer)
    assert (logged["endpoint"], logged["channel"]) == ("trigger", "email")
    assert [o["product_id"] for o in logged["offers"]] == [
        o["product_id"] for o in decision["offers"]]
    log.close()


def test_no_decision_when_the_cart_was_bought_meanwhile(engine: Engine, now: datetime,
                                                         customer: str) -> None:
    policy(engine, CART)
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    post(engine, customer, product(engine, 7), "purchase", now + timedelta(minutes=30))
    Triggers(engine.store).run(engine, now + timedelta(minutes=90))
    assert feed(engine) == []
    assert [d["reason"] for d in feed(engine, dropped=True)] == ["bought meanwhile"]


def test_a_cart_that_grows_is_one_decision_due_after_its_last_addition_without_what_was_bought(
        engine: Engine, now: datetime, customer: str) -> None:
    policy(engine, CART)
    mail_consent(engine, customer, now)
    first, second, third = (product(engine, i) for i in (7, 8, 9))
    post(engine, customer, first, "cart", now)
    post(engine, customer, second, "cart", now + timedelta(minutes=5))
    triggers = Triggers(engine.store)
    assert triggers.run(engine, now + timedelta(minutes=10)).found == 1
    post(engine, customer, third, "cart", now + timedelta(minutes=40))
    post(engine, customer, second, "purchase", now + timedelta(minutes=45))
    assert triggers.run(engine, now + timedelta(minutes=70)).found == 0  # still the one cart
    assert feed(engine, dropped=True) == []  # due an hour after the third was added
    assert triggers.run(engine, now + timedelta(minutes=100)).sent == 1
    [decision] = feed(engine, dropped=True)
    assert decision["subject"] == [first, third]
    assert decision["due_at"] == (now + timedelta(minutes=100)).isoformat()


def test_no_decision_without_the_channels_consent(engine: Engine, now: datetime,
                                                  customer: str) -> None:
    policy(engine, CART)
    engine.store.set_consents(customer, {"email": (True, False)}, "test", now)  # no DOI
    post(engine, customer, product(engine, 7), "cart", now)
    Triggers(engine.store).run(engine, now + timedelta(minutes=90))
    assert feed(engine) == []
    assert [d["reason"] for d in feed(engine, dropped=True)] == [
        "no e-mail consent with double opt-in"]


def test_a_decision_due_in_quiet_hours_waits_for_their_end_in_the_customers_time_zone(
        engine: Engine, now: datetime, customer: str) -> None:
    region = engine.state.region_of(engine.state.row_of(customer))
    assert region, "the test customer has a region"
    policy(engine, CART + "contact: {quiet_hours: {start: '21:00', end: '08:00'}, "
                          f"region_time_zones: {{{region}: Asia/Tokyo}}}}\n")  # UTC+9
    mail_consent(engine, customer, now)
    cart = now.replace(hour=11, minute=30)  # 20:30 in Tokyo: due at 21:30 there
    post(engine, customer, product(engine, 7), "cart", cart)
    triggers = Triggers(engine.store)
    waited = triggers.run(engine, cart + timedelta(minutes=61))
    assert (waited.sent, waited.waiting) == (0, 1)
    triggers.run(engine, cart.replace(hour=22, minute=59))  # 07:59 in Tokyo
    assert feed(engine, dropped=True) == []
    assert triggers.run(engine, cart.replace(hour=23, minute=0)).sent == 1  # 08:00 there
    assert [d["due_at"] for d in feed(engine)] == [cart.replace(hour=23, minute=0).isoformat()]


def test_no_decision_past_the_message_cap(engine: Engine, now: datetime,
                                          customer: str) -> None:
    policy(engine, CART + "contact: {max_messages: 1, per_days: 7}\n")
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    triggers = Triggers(engine.store)
    triggers.run(engine, now + timedelta(minutes=61))
    post(engine, customer, product(engine, 8), "cart", now + timedelta(minutes=65))
    triggers.run(engine, now + timedelta(minutes=70))
    triggers.run(engine, now + timedelta(minutes=126))
    outcomes = [(d["status"], d["reason"]) for d in feed(engine, dropped=True)]
    assert outcomes == [("sent", None), ("dropped", "message cap: 1 in 7 days reached")]
    post(engine, customer, product(engine, 9), "cart", now + timedelta(days=8))
    triggers.run(engine, now + timedelta(days=8, minutes=61))  # the week has passed
    assert len(feed(engine)) == 2


def test_a_customer_crossing_into_lapsed_gets_one_win_back_decision(
        engine: Engine, now: datetime) -> None:
    policy(engine, "triggers: [{name: win-back, when: stage, stage: lapsed, channel: email, "
                   "offers: [winback15]}]\n")
    state, now_ns = engine.state, int(np.datetime64(now, "ns").astype(np.int64))
    days = (now_ns - state.last_ns) / NS_PER_DAY
    bought = state.first_ns != np.iinfo(np.int64).min
    row = int(np.flatnonzero(bought & (days > 120) & (days < 170))[0])
    customer = str(state.customers.names[row])
    mail_consent(engine, customer, now)
    crossing = now + timedelta(days=181 - float(days[row]))  # lapsed after 180 days
    triggers = Triggers(engine.store)
    assert triggers.run(engine, now).found == 0  # the first pass only takes its moment
    triggers.run(engine, crossing - timedelta(days=1))
    assert [d for d in feed(engine) if d["customer_id"] == customer] == []
    triggers.run(engine, crossing + timedelta(hours=1))
    triggers.run(engine, crossing + timedelta(days=3))
    mine = [d for d in feed(engine, dropped=True) if d["customer_id"] == customer]
    assert len(mine) == 1 and mine[0]["status"] == "sent", mine
    assert [o["product_id"] for o in mine[0]["offers"]] == ["winback15"]


def test_a_first_purchase_starts_the_welcome_series_once(engine: Engine, now: datetime) -> None:
    policy(engine, "triggers: [{name: welcome, when: first_purchase, channel: email, "
                   "after_minutes: 10}]\n")
    mail_consent(engine, "newcomer", now)
    known = str(engine.customers.names[int(np.flatnonzero(
        engine.state.first_ns != np.iinfo(np.int64).min)[0])])
    mail_consent(engine, known, now)
    mail_consent(engine, "another newcomer", now)
    post(engine, "newcomer", product(engine, 7), "purchase", now)
    post(engine, known, product(engine, 7), "purchase", now)  # bought before the snapshot
    triggers = Triggers(engine.store)
    triggers.run(engine, now + timedelta(minutes=11))
    post(engine, "newcomer", product(engine, 8), "purchase", now + timedelta(minutes=20))
    post(engine, "another newcomer", product(engine, 9), "purchase", now + timedelta(minutes=20))
    triggers.run(engine, now + timedelta(hours=1))
    assert [(d["customer_id"], d["subject"]) for d in feed(engine, dropped=True)] == [
        ("newcomer", [product(engine, 7)]), ("another newcomer", [product(engine, 9)])]


def test_a_streak_of_views_of_one_category_yields_one_decision(engine: Engine, now: datetime,
                                                               customer: str) -> None:
    policy(engine, "triggers: [{name: browsing, when: category_views, channel: email, "
                   "views: 3, within_minutes: 60}]\n")
    mail_consent(engine, customer, now)
    offers = engine.offers
    same = np.flatnonzero(offers.category == offers.category[0])[:5]
    other = np.flatnonzero(offers.category != offers.category[0])[0]
    triggers = Triggers(engine.store)
    for minute, item in ((0, same[0]), (10, other), (20, same[1])):  # two of one category
        post(engine, customer, product(engine, int(item)), "view",
             now + timedelta(minutes=minute))
    triggers.run(engine, now + timedelta(minutes=25))
    assert feed(engine, dropped=True) == []
    for minute, item in ((30, same[2]), (40, same[3])):  # the third and a fourth
        post(engine, customer, product(engine, int(item)), "view",
             now + timedelta(minutes=minute))
    triggers.run(engine, now + timedelta(minutes=45))
    decided = feed(engine, dropped=True)
    assert [(d["status"], d["subject"]) for d in decided] == [
        ("sent", [str(offers.categories[offers.category[0]])])]


def test_a_pass_leaves_the_work_to_the_holder_of_the_lease(engine: Engine, now: datetime,
                                                          customer: str) -> None:
    policy(engine, CART)
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    assert engine.store.claim_lease(LEASE, "another worker", 60)
    assert not Triggers(engine.store).run(engine, now + timedelta(hours=2)).ran
    engine.store.release_lease(LEASE, "another worker")
    passes = []
    workers = [threading.Thread(target=lambda: passes.append(
        Triggers(engine.store).run(engine, now + timedelta(hours=2)))) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(p.sent for p in passes) == 1 and len(feed(engine)) == 1


def test_erasure_forgets_a_customers_trigger_decisions(engine: Engine, now: datetime,
                                                       customer: str) -> None:
    policy(engine, CART)
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    triggers = Triggers(engine.store)
    triggers.run(engine, now + timedelta(hours=2))
    post(engine, customer, product(engine, 8), "cart", now + timedelta(hours=3))
    triggers.run(engine, now + timedelta(hours=3, minutes=10))
    erasure = engine.store.erase(customer, "test", now + timedelta(hours=3), {})
    assert erasure.removed["trigger_decisions"] == 2  # one sent, one pending
    triggers.run(engine, now + timedelta(hours=5))
    assert feed(engine, dropped=True) == []


def test_trigger_settings_are_checked() -> None:
    with pytest.raises(PolicyError, match="stage"):
        parse("triggers: [{name: x, when: stage, channel: email}]")
    with pytest.raises(PolicyError, match="channel"):
        parse("triggers: [{name: x, when: cart_abandoned, channel: web}]")
    with pytest.raises(PolicyError, match="unknown time zone"):
        parse("contact: {time_zone: Mars/Olympus}")
    with pytest.raises(PolicyError, match="trigger names used twice"):
        parse("triggers: [{name: x, when: first_purchase, channel: sms}, "
              "{name: x, when: first_purchase, channel: sms}]")


class Receiver(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    received: ClassVar[list[tuple[bytes, str]]] = []

    def do_POST(self) -> None:  # the standard library's name
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.received.append((body, self.headers["X-Nbo-Signature"]))
        self.send_response(Receiver.answers.pop(0) if Receiver.answers else 200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.answers, Receiver.received = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_the_webhook_gets_signed_decisions_and_a_refused_post_is_repeated(
        engine: Engine, now: datetime, customer: str, receiver: str) -> None:
    policy(engine, CART)
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    Receiver.answers = [500]
    triggers = Triggers(engine.store, Webhook(receiver, "s3cret-for-the-hook"))
    assert triggers.run(engine, now + timedelta(minutes=61)).delivered == 0
    assert triggers.run(engine, now + timedelta(minutes=62)).delivered == 1
    assert triggers.run(engine, now + timedelta(minutes=63)).delivered == 0  # taken once
    assert len(Receiver.received) == 2 and Receiver.received[0][0] == Receiver.received[1][0]
    body, header = Receiver.received[1]
    stamp = int(header.split(",")[0].removeprefix("t="))
    assert header == signature("s3cret-for-the-hook", stamp, body)
    expected = hmac.new(b"s3cret-for-the-hook", f"{stamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    assert header.endswith(f"v1={expected}")
    assert [d["customer_id"] for d in json.loads(body)["decisions"]] == [customer]


def test_the_timer_runs_passes_until_stopped(engine: Engine, now: datetime,
                                             customer: str) -> None:
    policy(engine, CART.replace("after_minutes: 60", "after_minutes: 0"))
    mail_consent(engine, customer, now)
    post(engine, customer, product(engine, 7), "cart", now)
    stop = threading.Event()
    Triggers(engine.store).every(0.05, lambda: engine, lambda: now, stop)
    for _ in range(200):  # bounded: at most 10 s
        if feed(engine):
            break
        stop.wait(0.05)
    stop.set()
    assert len(feed(engine)) == 1


@BOTH_DATABASES
def test_the_feed_over_http_pages_by_cursor_and_repeats_from_an_old_one(
        client: TestClient, people: dict, snapshot_dir: Path, consent_url: str) -> None:
    at = load_snapshot(snapshot_dir).now
    other = Store(consent_url, ERASURE_KEY)
    customers = [people["buyer"], "walk-in 1", "walk-in 2"]
    for walk_in in customers[1:]:
        other.set_consents(walk_in, {"email": (True, True)}, "test", at.to_pydatetime())
    put = client.put("/admin/policy", headers=ADMIN_AUTH, json={"triggers": [
        {"name": "cart-now", "when": "cart_abandoned", "channel": "email", "after_minutes": 0,
         "k": 2}]})
    assert put.status_code == 200, put.text
    products = [o["product_id"] for o in client.post(
        "/rank", json={"customer_id": customers[0], "k": 3}, headers=AUTH).json()["offers"]]
    carts = enumerate(zip(customers, products, strict=True))
    events = [{"event_id": f"c{i}", "customer_id": c, "product_id": p, "event_type": "cart",
               "timestamp": at.isoformat()} for i, (c, p) in carts]
    assert client.post("/events", json={"events": events}, headers=AUTH).status_code == 200
    assert client.post("/admin/triggers/run", headers=AUTH).status_code == 401
    ran = client.post("/admin/triggers/run", headers=ADMIN_AUTH)
    assert ran.status_code == 200 and ran.json()["sent"] == 3, ran.text
    assert client.get("/triggers").status_code == 401
    first = client.get("/triggers", params={"since": 0, "limit": 2}, headers=AUTH).json()
    assert [d["subject"] for d in first["decisions"]] == [[p] for p in products[:2]]
    rest = client.get("/triggers", params={"since": first["cursor"]}, headers=AUTH).json()
    assert [d["subject"] for d in rest["decisions"]] == [[products[2]]]
    done = client.get("/triggers", params={"since": rest["cursor"]}, headers=AUTH).json()
    assert done == {"decisions": [], "cursor": rest["cursor"]}
    again = client.get("/triggers", params={"since": 0, "limit": 2}, headers=AUTH).json()
    assert again == first  # handed over at least once: an old cursor repeats
    assert client.get("/triggers", params={"since": -1}, headers=AUTH).status_code == 400
    assert other.claim_lease(LEASE, "another replica", 60)
    assert client.post("/admin/triggers/run", headers=ADMIN_AUTH).status_code == 409
    other.close()


def test_a_webhook_without_a_long_enough_secret_refuses_the_start() -> None:
    assert webhook(Settings(trigger_webhook_url=None)) is None
    with pytest.raises(RuntimeError, match="NBO_TRIGGER_WEBHOOK_SECRET"):
        webhook(Settings(trigger_webhook_url="http://mail.example/hook",
                         trigger_webhook_secret="short"))
    hook = webhook(Settings(trigger_webhook_url="http://mail.example/hook",
                            trigger_webhook_secret="s" * 16))
    assert hook is not None and hook.url == "http://mail.example/hook"


def test_a_birthday_is_one_decision_from_midnight_in_the_customers_time_zone(
        engine: Engine, now: datetime) -> None:
    policy(engine, "triggers: [{name: birthday, when: birthday, channel: email, "
                   "after_minutes: 540}]\ncontact: {time_zone: Asia/Tokyo}\n")  # UTC+9
    known = engine.state.birthday[(engine.state.birthday > 0) & (engine.state.birthday != 229)]
    codes, shared = np.unique(known, return_counts=True)
    code = int(codes[shared.argmax()])  # a day two customers were born on
    same_day = np.flatnonzero(engine.state.birthday == code)
    assert len(same_day) >= 2
    mine, other = (str(engine.customers.names[row]) for row in same_day[:2])
    for customer in (mine, other):
        mail_consent(engine, customer, now)
    engine.store.set_consents(other, {"personalization": (False, False)}, "test", now)
    day = date(now.year + 1, code // 100, code % 100)
    midnight = datetime.combine(day, datetime.min.time()) - timedelta(hours=9)  # in UTC
    triggers = Triggers(engine.store)
    triggers.run(engine, midnight - timedelta(minutes=1))  # the first pass notes its moment
    assert triggers.run(engine, midnight + timedelta(minutes=1)).found == len(same_day)
    triggers.run(engine, midnight + timedelta(minutes=539))
    assert not [d for d in feed(engine, dropped=True) if d["customer_id"] in (mine, other)]
    triggers.run(engine, midnight + timedelta(minutes=540))
    triggers.run(engine, midnight + timedelta(days=2))
    outcomes = {d["customer_id"]: (d["status"], d["reason"], d["subject"])
                for d in feed(engine, dropped=True) if d["customer_id"] in (mine, other)}
    assert outcomes == {mine: ("sent", None, [day.isoformat()]),
                        other: ("dropped", "no personalisation consent", [day.isoformat()])}


def test_a_birthday_on_the_29th_of_february_falls_on_the_28th_in_other_years(
        engine: Engine) -> None:
    engine.state.birthday[:] = 0
    engine.state.birthday[4] = 229
    trigger = parse("triggers: [{name: b, when: birthday, channel: email}]\n").policy.triggers[0]
    found = birthdays(engine, trigger, Contact(), int(np.datetime64("2027-02-27", "ns")
                                                      .astype(np.int64)), datetime(2027, 2, 28, 12))
    assert [(o["customer_id"], json.loads(o["subject"]), o["due_at"]) for o in found] == [
        (str(engine.customers.names[4]), ["2027-02-28"], datetime(2027, 2, 28))]


def test_a_birthday_a_stopped_service_missed_by_more_than_a_day_is_skipped(
        engine: Engine) -> None:
    engine.state.birthday[:] = 0
    engine.state.birthday[[4, 5]] = [301, 303]
    trigger = parse("triggers: [{name: b, when: birthday, channel: email}]\n").policy.triggers[0]
    found = birthdays(engine, trigger, Contact(), int(np.datetime64("2027-02-01", "ns")
                                                      .astype(np.int64)), datetime(2027, 3, 3, 12))
    assert [o["customer_id"] for o in found] == [str(engine.customers.names[5])]
