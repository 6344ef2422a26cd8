"""Events posted to /events, checked by the data contract's rules for the events table (those
of ``nbo data validate``) against the served model's products, as store rows.

A call is stored whole or not at all: with any bad event nothing is stored and the answer
lists every bad event with its index in the call and the contract's reason, so the client
fixes those and posts the call again (the event ids make the retry safe).
"""

from __future__ import annotations

from collections.abc import Container
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.contract import validate_events
from serving.requests import RequestError
from serving.schemas import EventIn


class BadEvents(RequestError):
    """Events that break the contract: their index in the call and the reason."""

    def __init__(self, bad: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(bad)} event(s) break the data contract; none was stored")
        self.bad = bad


def event_rows(events: list[EventIn], products: Container[str], now: datetime
               ) -> list[dict[str, Any]]:
    """Store rows of valid events (``now`` for those without a timestamp; an event id given
    twice in the call stands for one event); raises :class:`BadEvents` if any is not valid."""
    first: dict[str, tuple[int, EventIn]] = {}
    repeated = []
    for index, event in enumerate(events):
        if first.setdefault(event.event_id, (index, event))[1] != event:
            repeated.append({"index": index, "event_id": event.event_id,
                             "reason": "event_id given twice with other values"})
    if repeated:
        raise BadEvents(repeated)
    unique = [event for _, event in first.values()]
    frame = pd.DataFrame({
        C.customer: [e.customer_id for e in unique],
        C.product: [e.product_id for e in unique],
        C.event_type: [e.event_type for e in unique],
        C.timestamp: [now.isoformat() if e.timestamp is None else str(e.timestamp)
                      for e in unique],
        C.order: [e.order_id for e in unique],
        C.channel: [e.channel for e in unique],
    }, dtype=object)  # text as a CSV file is read: the contract parses every column itself
    # numbers as a Parquet file holds them (the body parsed them already)
    frame[C.quantity] = np.array([e.quantity for e in unique], dtype=float)
    frame[C.rating] = np.array([e.rating for e in unique], dtype=float)
    # only the call's own products are looked up (an Arrow-backed index of the whole
    # catalogue would be walked in Python by isin, milliseconds per call)
    named = set(frame[C.product].astype(str))
    kept, bad = validate_events(frame, pd.Index([p for p in named if p in products],
                                                dtype=object))
    if len(bad):
        raise BadEvents([{"index": first[unique[int(row) - 1].event_id][0],
                          "event_id": unique[int(row) - 1].event_id, "reason": str(reason)}
                         for row, reason in zip(bad[C.source_row], bad[C.reason], strict=True)])
    when = kept[C.timestamp].dt.to_pydatetime()
    rows = {event.event_id: {
        "event_id": event.event_id, "customer_id": customer, "product_id": product,
        "event_type": str(kind), "timestamp": moment, "quantity": int(quantity),
        "rating": None if pd.isna(given) else float(given),
        "order_id": None if pd.isna(placed) else str(placed),
        "channel": None if pd.isna(via) else str(via),
    } for event, customer, product, kind, moment, quantity, given, placed, via in zip(
        unique, kept[C.customer].tolist(), kept[C.product].tolist(),
        kept[C.event_type].tolist(), when, kept[C.quantity].tolist(), kept[C.rating].tolist(),
        kept[C.order].tolist(), kept[C.channel].tolist(), strict=True)}
    return [rows[event.event_id] for event in events]  # the store stores a repeat once
