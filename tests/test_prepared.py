"""A request's store reads on the driver's cursor give SQLAlchemy's rows, on each database."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from store_backends import BOTH_DATABASES

from serving.prepared import Prepared
from serving.store import _ONE, CONSENT_ROWS, ERASED, EVENT_ROWS, EXPOSURE_ROWS, Store

NOW = datetime(2011, 12, 9, 12, 0)


def filled(store: Store) -> None:
    store.set_consents("ann", {"email": (True, True), "personalization": (False, False)},
                       "test", NOW - timedelta(days=2))
    day = timedelta(days=1)
    store.append_feedback([
        {"customer_id": "ann", "product_id": p, "action": a, "timestamp": NOW - days * day,
         "request_id": f"r{n}"}
        for n, (p, a, days) in enumerate([
            ("p1", "impression", 1), ("p1", "impression", 3), ("p1", "click", 2),
            ("p2", "impression", 20), ("p2", "dismiss", 5), ("p3", "conversion", 0.5),
            ("p3", "impression", 1.5), ("p4", "conversion", 40), ("p5", "impression", 200)])],
        NOW)
    store.append_events([
        {"event_id": f"e{n}", "customer_id": "ann", "product_id": f"p{n % 4}",
         "event_type": kind, "timestamp": NOW - timedelta(hours=n), "quantity": n % 3 + 1,
         "rating": 4.5 if kind == "rating" else None, "order_id": None, "channel": None}
        for n, kind in enumerate(["purchase", "view", "rating", "cart", "view", "return"])],
        NOW)
    store.erase("bob", "test", NOW, {})


def reads(store: Store) -> list[tuple[Any, dict[str, Any]]]:
    window = {"since": NOW - timedelta(days=30), "window": NOW - timedelta(days=14),
              "rest": NOW - timedelta(days=30), "as_of": NOW - timedelta(days=1),
              "until": NOW}
    return [
        (_ONE[CONSENT_ROWS], {"customer": "ann"}),
        (_ONE[EXPOSURE_ROWS], {"customer": "ann", **window}),
        (_ONE[EVENT_ROWS], {"customer": "ann", "as_of": NOW - timedelta(hours=4),
                            "until": NOW, "limit": 3}),
        (_ONE[EVENT_ROWS], {"customer": "ann", "as_of": NOW - timedelta(days=1),
                            "until": NOW, "limit": 200}),
        (ERASED, {"token": store.token("bob")}),
        (ERASED, {"token": store.token("ann")}),
    ]


@BOTH_DATABASES
def test_prepared_reads_give_sqlalchemys_rows_with_its_types(store: Store) -> None:
    filled(store)
    with store.engine.connect() as db:
        for statement, params in reads(store):
            expected = sorted(tuple(row) for row in db.execute(statement, params))
            got = sorted(tuple(row) for row in Prepared(statement, store.engine.dialect)
                         .rows(db, params))
            assert got == expected
            assert [[type(v) for v in row] for row in got] == \
                [[type(v) for v in row] for row in expected]
        rows = Prepared(_ONE[EXPOSURE_ROWS], store.engine.dialect).rows(db, reads(store)[1][1])
    shown = {row.product_id: (row.shown, row.clicked, row.dismissed) for row in rows}
    assert shown["p1"] == (2, 1, 0) and shown["p2"][2] == 1 and shown["p3"][1] == 1
    assert isinstance(rows[0].product_id, str)


def test_a_list_parameter_is_refused() -> None:
    from sqlalchemy.dialects import sqlite

    with pytest.raises(ValueError, match="list parameter"):
        Prepared(CONSENT_ROWS, sqlite.dialect())
