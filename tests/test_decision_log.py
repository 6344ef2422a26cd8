"""The decision log: every served list stored in batches, with a keyed token instead of the
customer's id, erased with the customer, swept after its retention."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from service_client import AUTH
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient
from store_backends import BOTH_DATABASES, ERASURE_KEY

from serving.decision_log import DecisionLog
from serving.store import Store, decision_log

NOW = datetime(2026, 12, 6, 10, 0)


def row(customer: str | None, at: datetime = NOW, endpoint: str = "rank") -> dict[str, Any]:
    return {"request_id": f"r-{endpoint}-{at:%j%H%M}", "customer_id": customer,
            "channel": "web", "endpoint": endpoint, "model_version": "3",
            "policy_version": "p1", "decided_at": at,
            "offers": [{"product_id": "x", "position": 1, "score": 0.5, "priority": 0.2,
                        "probability": 1.0}]}


def logged(store: Store) -> list[Any]:
    with store.engine.connect() as db:
        return list(db.execute(decision_log.select().order_by(decision_log.c.id)))


@BOTH_DATABASES
def test_rows_keep_a_token_not_the_id_and_go_with_the_customers_erasure(store: Store) -> None:
    log = DecisionLog(store, 90, lambda: NOW, flush_seconds=3600)
    log.record([row("ann"), row("bob"), row(None, endpoint="similar")])
    store.erase("bob", "test", NOW, {})  # erased while the row waited: never written
    assert log.flush() == 2
    stored = logged(store)
    assert [r.token for r in stored] == [store.token("ann"), None]
    assert "ann" not in repr([tuple(r) for r in stored])
    [ann] = store.decisions_of("ann")
    assert (ann["endpoint"], ann["model_version"], ann["offers"][0]["priority"]) == (
        "rank", "3", 0.2)
    assert store.erase("ann", "test", NOW, {}).removed["decision_log"] == 1
    assert store.decisions_of("ann") == []
    log.close()


def test_the_sweep_removes_rows_past_the_retention_and_of_erased_customers(
        store: Store) -> None:
    log = DecisionLog(store, 30, lambda: NOW, flush_seconds=3600)
    log.record([row("old", NOW - timedelta(days=31)), row("new", NOW - timedelta(days=29))])
    log.flush()
    store.erase("late", "test", NOW, {})
    with store.engine.begin() as db:  # written by another process in the erasure's instant
        db.execute(decision_log.insert().values(
            request_id="x", token=store.token("late"), channel="web", endpoint="rank",
            model_version="3", policy_version="p1", decided_at=NOW, offers="[]"))
    assert log.sweep() == 2
    assert [r.token for r in logged(store)] == [store.token("new")]
    log.close()


def test_rows_the_store_refused_wait_for_the_next_write(
        store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(store, 90, lambda: NOW, flush_seconds=3600)
    log.record([row("ann")])
    real = store.log_decisions

    def down(rows: list[dict[str, Any]]) -> int:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "log_decisions", down)
    with pytest.raises(OperationalError):
        log.flush()
    monkeypatch.setattr(store, "log_decisions", real)
    log.record([row("bob")])
    assert log.flush() == 2
    assert [r.token for r in logged(store)] == [store.token("ann"), store.token("bob")]
    log.record([row("cid")])
    monkeypatch.setattr(store, "log_decisions", down)
    with caplog.at_level(logging.ERROR, logger="serving.decision_log"):
        log.close()  # stopping with the store down: said, not raised
    assert "lost 1 rows at shutdown" in caplog.text


def test_a_retention_of_zero_days_logs_nothing(store: Store) -> None:
    log = DecisionLog(store, 0, lambda: NOW)
    log.record([row("ann")])
    assert log.flush() == 0 and logged(store) == []
    log.close()


def test_the_service_logs_rankings_similar_offers_and_letters(
        client: TestClient, people: dict, consent_url: str) -> None:
    buyer = people["buyer"]
    ranked = client.post("/rank", json={"customer_id": buyer, "k": 4, "explain": True},
                         headers=AUTH).json()
    similar = client.post("/similar", json={"product_id": ranked["offers"][0]["product_id"],
                                            "customer_id": buyer, "k": 3}, headers=AUTH).json()
    letters = client.post("/newsletter", json={"customers": [buyer]}, headers=AUTH).json()
    store = Store(consent_url, ERASURE_KEY)
    deadline = time.monotonic() + 10
    while len(rows := store.decisions_of(buyer)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the writer's thread writes every half second
    assert [(r["endpoint"], r["request_id"]) for r in rows] == [
        ("rank", ranked["request_id"]), ("similar", similar["request_id"]),
        ("newsletter", letters["request_id"])]
    rank = rows[0]
    assert [o["product_id"] for o in rank["offers"]] == [
        o["product_id"] for o in ranked["offers"]]
    assert [o["position"] for o in rank["offers"]] == [1, 2, 3, 4]
    assert [o["priority"] for o in rank["offers"]] == pytest.approx(
        [o["priority"] for o in ranked["offers"]])
    assert (rank["model_version"], rank["policy_version"]) == (
        ranked["model_version"], ranked["policy_version"])
    assert [o["product_id"] for o in rows[2]["offers"]] == [
        b["product_id"] for b in letters["letters"][0]["blocks"]]
    store.close()
