"""The consent, feedback and erasure store on SQLite and on PostgreSQL: the same behaviour,
the audit trail, and concurrent writers that do not lose or break anything."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import event as sqlalchemy_event
from store_backends import BOTH_DATABASES, ERASURE_KEY

from serving.store import NO_EXPOSURE, Store, Window

pytestmark = BOTH_DATABASES

NOW = datetime(2026, 3, 1, 12, 0)


def dataset_consents() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": ["a", "a", "b", "b"],
        "purpose": ["personalization", "email", "email", "email"],
        "granted": [True, True, False, True],
        "double_opt_in": [None, True, False, False],
        "updated_at": [NOW - timedelta(days=9), NOW - timedelta(days=9),
                       NOW - timedelta(days=20), NOW - timedelta(days=2)],
        "source": ["shop", "shop", "shop", None],
    })


def test_seeding_is_once_per_dataset_and_keeps_later_changes(store: Store) -> None:
    assert store.seed_consents(dataset_consents(), "v1") == 3  # b's latest email record wins
    assert store.seed_consents(dataset_consents(), "v1") == 0
    a, b = store.consent("a", False), store.consent("b", False)
    assert a.personalization and a.channels == frozenset({"email"})
    assert not b.personalization and b.channels == frozenset()  # no double opt-in
    store.set_consents("a", {"email": (False, False)}, "api", NOW)
    store.seed_consents(dataset_consents(), "v2")  # a new dataset does not undo the change
    assert store.consent("a", False).channels == frozenset()
    assert store.consent("stranger", True).personalization
    assert not store.consent("stranger", False).personalization


def test_every_consent_change_is_in_the_trail(store: Store) -> None:
    store.set_consents("c", {"email": (True, True), "sms": (True, False)}, "form", NOW)
    store.set_consents("c", {"email": (False, False)}, "unsubscribe link",
                       NOW + timedelta(hours=1))
    trail = store.consent_trail("c")
    assert trail[["purpose", "granted", "previous", "source"]].values.tolist() == [
        ["email", True, "none", "form"], ["sms", True, "none", "form"],
        ["email", False, "granted", "unsubscribe link"]]
    assert trail["changed_at"].tolist()[-1] == pd.Timestamp(NOW + timedelta(hours=1))
    with pytest.raises(ValueError, match="unknown consent purpose"):
        store.set_consents("c", {"telepathy": (True, True)}, "form", NOW)


def test_exposure_counts_impressions_and_clicks_in_the_window(store: Store) -> None:
    events = [{"customer_id": "a", "product_id": p, "action": action,
               "timestamp": NOW - timedelta(days=days)}
              for p, action, days in [("x", "impression", 1), ("x", "impression", 2),
                                      ("x", "impression", 30), ("y", "impression", 1),
                                      ("y", "click", 1), ("z", "conversion", 3)]]
    assert store.append_feedback(events, NOW).stored == 6
    seen = store.exposure("a", Window(NOW - timedelta(days=14), NOW, NOW))
    counts = dict(zip(seen.product_ids, seen.shown.tolist(), strict=True))
    clicked = dict(zip(seen.product_ids, seen.clicked.tolist(), strict=True))
    assert counts == {"x": 2, "y": 1, "z": 0}
    assert clicked == {"x": False, "y": True, "z": True}
    assert store.exposure("nobody", Window(NOW - timedelta(days=14), NOW, NOW)
                          ).product_ids == []
    assert len(store.feedback_frame()) == 6
    later = [{"customer_id": "a", "product_id": "x", "action": "click",
              "timestamp": NOW + timedelta(hours=1)}]
    store.append_feedback(later, NOW)
    then = store.exposure("a", Window(NOW - timedelta(days=14), NOW, NOW, NOW))
    assert not dict(zip(then.product_ids, then.clicked.tolist(), strict=True))["x"]
    after = store.exposure("a", Window(NOW - timedelta(days=14), NOW, NOW, NOW
                                       + timedelta(hours=2)))
    assert dict(zip(after.product_ids, after.clicked.tolist(), strict=True))["x"]


def test_a_customers_reads_alone_equal_their_reads_among_others(store: Store) -> None:
    """A request reads one customer (a statement of its own), the newsletter many at once:
    consent, exposure and live events come out the same, within one held connection too."""
    store.seed_consents(dataset_consents(), "v1")
    feedback = [{"customer_id": c, "product_id": p, "action": action,
                 "timestamp": NOW - timedelta(days=days)}
                for c, p, action, days in [("a", "x", "impression", 1), ("a", "x", "click", 1),
                                           ("b", "x", "impression", 2), ("a", "y", "dismiss", 3),
                                           ("b", "z", "conversion", 1)]]
    store.append_feedback(feedback, NOW)
    events = [{"event_id": f"e{i}", "customer_id": c, "product_id": p, "event_type": "view",
               "timestamp": NOW - timedelta(hours=i), "quantity": 1}
              for i, (c, p) in enumerate([("a", "x"), ("b", "y"), ("a", "z"), ("a", "y")])]
    store.append_events(events, NOW)
    window = Window(NOW - timedelta(days=14), NOW - timedelta(days=7), NOW - timedelta(days=5),
                    NOW)
    many_consents = store.consents_of(["a", "b", "c"], False)
    assert store.consents_and_holders(["a", "b", "c", "a"], False) == (many_consents,
                                                                       {"a", "b"})
    many_exposure = store.exposures(["a", "b", "c"], window)
    many_events = store.live_events(["a", "b", "c"], NOW - timedelta(days=1), NOW, 2)
    assert len(many_events["a"]) == 2 and set(many_exposure) == {"a", "b"}
    for held in (False, True):
        with store.reading() if held else nullcontext():
            for customer in ("a", "b", "c"):
                assert store.consent(customer, False) == many_consents[customer]
                alone = store.exposure(customer, window)
                expected = many_exposure.get(customer, NO_EXPOSURE)
                assert alone.product_ids == expected.product_ids
                for field in ("shown", "clicked", "dismissed", "converted_ns"):
                    assert getattr(alone, field).tolist() == getattr(expected, field).tolist()
                assert store.live_events([customer], NOW - timedelta(days=1), NOW, 2).get(
                    customer, []) == many_events.get(customer, [])


def test_one_answers_reads_take_one_connection(store: Store) -> None:
    checkouts = []
    sqlalchemy_event.listen(store.engine, "checkout", lambda *_: checkouts.append(1))
    window = Window(NOW - timedelta(days=14), NOW, NOW)
    with store.reading():
        store.consent("a", False)
        store.is_erased("a")
        store.exposure("a", window)
        store.live_events(["a"], NOW - timedelta(days=1), NOW, 5)
    assert len(checkouts) == 1


def test_erasure_keeps_counts_and_a_keyed_hash_only(store: Store, consent_url: str) -> None:
    store.set_consents("gone", {"email": (True, True)}, "form", NOW)
    store.append_feedback([{"customer_id": "gone", "product_id": "x", "action": "click",
                            "timestamp": NOW}], NOW)
    erasure = store.erase("gone", "request by mail", NOW, {"model_rows": 1})
    assert erasure.removed == {"consents": 1, "consent_changes": 1, "feedback": 1,
                               "events": 0, "trigger_decisions": 0, "decision_log": 0,
                               "model_rows": 1}
    assert store.consent_trail("gone").empty and store.feedback_frame().empty
    log = store.erasure_log()
    assert "gone" not in log.to_string()
    # the same database opened again (a restarted service) still knows who was erased
    again = Store(consent_url, ERASURE_KEY)
    assert again.token("gone") in again.erased_tokens()
    assert again.seed_consents(pd.DataFrame({
        "customer_id": ["gone"], "purpose": ["email"], "granted": [True],
        "double_opt_in": [True], "updated_at": [NOW], "source": ["shop"]}), "v9") == 0
    again.close()


def test_concurrent_writers_lose_nothing(consent_url: str) -> None:
    """Several processes' worth of stores on one database: starting together, seeding the
    same dataset and changing the same customer's consent at once."""
    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: Store(consent_url, ERASURE_KEY), range(8)))
        seeded = list(pool.map(lambda s: s.seed_consents(dataset_consents(), "v1"), stores))
        assert sorted(seeded) == [0] * 7 + [3]
        changes = list(pool.map(
            lambda i: stores[i].set_consents("a", {"sms": (i % 2 == 0, False)}, f"writer {i}",
                                             NOW + timedelta(seconds=i)), range(8)))
    assert len(changes) == 8
    assert len({s.token("a") for s in stores}) == 1  # one erasure key for all of them
    trail = stores[0].consent_trail("a")
    sms = trail[trail["purpose"] == "sms"]
    assert len(sms) == 8
    # changes queued one after the other: each names the state the one before left
    before = ["none", *("granted" if g else "denied" for g in sms["granted"].iloc[:-1])]
    assert sms["previous"].tolist() == before
    last = sms.iloc[-1]
    assert ("sms" in stores[0].consent("a", False).channels) == bool(last["granted"])
    for s in stores:
        s.close()


def test_the_erasure_key_is_never_in_the_database_and_another_key_is_refused(
        consent_url: str) -> None:
    from serving.store import metadata

    store = Store(consent_url, ERASURE_KEY)
    store.erase("gone", "api", NOW, {})
    with store.engine.connect() as db:
        held = [str(value) for table in metadata.sorted_tables
                for row in db.execute(table.select()) for value in row]
    store.close()
    assert held and not any(ERASURE_KEY in value or ERASURE_KEY.encode().hex() in value
                            for value in held)
    with pytest.raises(ValueError, match="not the key this store's erasures"):
        Store(consent_url, "a-different-erasure-key")
    with pytest.raises(ValueError, match="at least 16 characters"):
        Store(consent_url, "short")
    again = Store(consent_url, ERASURE_KEY)
    assert again.is_erased("gone")
    again.close()


def test_a_key_kept_in_the_database_by_an_earlier_version_moves_out(consent_url: str) -> None:
    import secrets

    from sqlalchemy import create_engine, delete, insert

    from serving.store import legacy_key, settings_table

    old = secrets.token_hex(32)
    Store(consent_url, old).close()  # the tables, then the store as an earlier version left it
    engine = create_engine(consent_url)
    with engine.begin() as db:
        db.execute(delete(settings_table))
        db.execute(insert(settings_table), [{"key": "erasure_key", "value": old}])
    engine.dispose()
    assert legacy_key(consent_url) == old
    with pytest.raises(ValueError, match="holds its erasure key in the database"):
        Store(consent_url, ERASURE_KEY)
    Store(consent_url, old).close()
    assert legacy_key(consent_url) is None
    Store(consent_url, old).close()  # the check value stays


def test_feedback_on_one_newsletter_is_kept_per_customer_and_a_retry_once(
        store: Store) -> None:
    """A newsletter call's request id covers every letter of it: two customers clicking the
    same offer are two clicks; the same customer's click posted again is one."""
    at = datetime(2026, 7, 1)
    click = {"request_id": "letters-1", "product_id": "p1", "action": "click",
             "timestamp": at}
    first = store.append_feedback([{**click, "customer_id": "c1"},
                                   {**click, "customer_id": "c2"}], at)
    again = store.append_feedback([{**click, "customer_id": "c1"}], at)
    assert (first.stored, again.stored, again.duplicates) == (2, 0, 1)
    assert sorted(store.feedback_frame()["customer_id"]) == ["c1", "c2"]

