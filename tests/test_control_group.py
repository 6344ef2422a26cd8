"""The universal control group: sticky, drawn anew per period, the non-personalised baseline
on the storefront and no personalised messages, while consent and every rule still win."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from store_backends import ERASURE_KEY

from features.settings import Settings
from features.snapshot import load_snapshot
from serving.assignment import CONTROL, PERSONALISED, ControlGroup
from serving.decision_log import letter_rows, ranking_row
from serving.engine import Engine, PolicySettings, Request
from serving.offer_policy import parse
from serving.policy import Consent
from serving.scorer import NON_PERSONALISED
from serving.store import Store
from serving.triggers import Triggers, feed_page

SHARE = 0.3
EVERYTHING = Consent(True, frozenset({"email", "sms", "app", "push", "post"}), True)
NO_MAIL = Consent(True, frozenset(), True)


@pytest.fixture
def now(snapshot_dir: Path) -> datetime:
    return load_snapshot(snapshot_dir).now.to_pydatetime()


def engine_with(model_dir: Path, tmp_path: Path, mail: str = "holdout") -> Engine:
    store = Store(f"sqlite:///{tmp_path / f'store-{mail}.db'}", ERASURE_KEY)
    return Engine.load(model_dir, "1", store,
                       PolicySettings(control=ControlGroup(SHARE, "test", "quarter", mail)))


def test_membership_is_sticky_of_the_share_and_drawn_anew_each_period() -> None:
    group, again = ControlGroup(0.2, "s"), ControlGroup(0.2, "s")
    at = datetime(2026, 5, 10)
    ids = [f"c{i}" for i in range(20_000)]
    arms = [group.arm(c, at) for c in ids]
    assert arms == [again.arm(c, at + timedelta(days=30)) for c in ids]  # same quarter
    assert 0.19 < arms.count(CONTROL) / len(ids) < 0.21
    assert set(arms) == {CONTROL, PERSONALISED}
    next_quarter = [group.arm(c, at + timedelta(days=60)) for c in ids]
    assert 0.6 < sum(a == b for a, b in zip(arms, next_quarter, strict=True)) / len(ids) < 0.8
    assert [ControlGroup(0.2, "other").arm(c, at) for c in ids] != arms
    forever = ControlGroup(0.2, "s", "never")
    assert [forever.arm(c, at) for c in ids[:500]] == [
        forever.arm(c, at.replace(year=2031)) for c in ids[:500]]
    assert ControlGroup().arm("c1", at) is None
    with pytest.raises(ValueError, match="share"):
        ControlGroup(0.7)


def test_the_control_group_never_gets_a_personalised_list_or_mail_and_consent_still_wins(
        model_dir: Path, tmp_path: Path, now: datetime) -> None:
    engine = engine_with(model_dir, tmp_path)
    plain = Engine.load(model_dir, "1", engine.store, PolicySettings())
    customers = [str(c) for c in engine.customers.names[:120]]
    arms = {c: engine.settings.control.arm(c, now) for c in customers}
    assert 20 < list(arms.values()).count(CONTROL) < 60
    letters = {x.customer_id: x for x in engine.newsletter(customers, ("profile",), now)}
    for customer, arm in arms.items():
        ranking = engine.rank(Request(customer, k=5), now, EVERYTHING)
        assert ranking.arm == arm
        baseline = plain.rank(Request(customer, k=5), now, replace(EVERYTHING,
                                                                   personalization=False))
        if arm == CONTROL:
            assert ranking.fallback == NON_PERSONALISED
            assert [o.product_id for o in ranking.offers] == [
                o.product_id for o in baseline.offers]
            assert letters[customer].no_mail in ("control group",
                                                 "no e-mail consent with double opt-in")
            assert not letters[customer].blocks
        else:
            assert ranking.fallback != NON_PERSONALISED
        assert engine.rank(Request(customer, "email"), now, NO_MAIL).offers == []
        row = ranking_row(ranking, "web", "rank", now)
        assert (row["experiment"], row["arm"]) == ("universal-control", arm)


def test_a_baseline_mail_for_the_control_group_is_non_personalised(
        model_dir: Path, tmp_path: Path, now: datetime) -> None:
    engine = engine_with(model_dir, tmp_path, mail="baseline")
    customers = [str(c) for c in engine.customers.names[:80]]
    control = [c for c in customers if engine.settings.control.arm(c, now) == CONTROL]
    for customer in control:
        engine.store.set_consents(customer, {"email": (True, True)}, "test", now)
    letters = engine.newsletter(control, ("profile",), now)
    assert letters and all(x.blocks and x.fallback == NON_PERSONALISED for x in letters)
    assert {r["arm"] for r in letter_rows(letters, "r", "1", "p", "batch", now)} == {CONTROL}


def test_trigger_messages_are_held_back_from_the_control_group(
        model_dir: Path, tmp_path: Path, now: datetime) -> None:
    engine = engine_with(model_dir, tmp_path)
    engine.use_policy(parse("triggers: [{name: cart, when: cart_abandoned, channel: email}]"))
    customers = [str(c) for c in engine.customers.names[:40]]
    at = now + timedelta(hours=1)
    for n, customer in enumerate(customers):
        engine.store.set_consents(customer, {"email": (True, True)}, "test", at)
        engine.store.append_events([{
            "event_id": f"cart-{n}", "customer_id": customer,
            "product_id": str(engine.items.names[n]), "event_type": "cart", "timestamp": at,
            "quantity": 1, "rating": None, "order_id": None, "channel": "web"}], at)
    Triggers(engine.store).run(engine, at + timedelta(minutes=1))
    decided = {d["customer_id"]: d for d in feed_page(engine.store, 0, 1000, True)[0]}
    assert set(decided) == set(customers)
    for customer, decision in decided.items():
        held = engine.settings.control.arm(customer, at) == CONTROL
        assert (decision["reason"] == "control group") == held, decision


def test_the_service_settings_make_the_control_group() -> None:
    made = PolicySettings.from_settings(Settings(control_share=0.1, control_salt="spring",
                                                 control_period="month",
                                                 control_mail="baseline")).control
    assert made == ControlGroup(0.1, "spring", "month", "baseline")
    assert PolicySettings.from_settings(Settings()).control.arm("c1", datetime(2026, 1, 1)) \
        is None
