"""Events posted to /events, checked by the data contract's rules for the events table (those
of ``nbo data validate``) against the served model's products, as store rows.

A call is stored whole or not at all: with any bad event nothing is stored and the answer
lists every bad event with its index in the call and the contract's reason, so the client
fixes those and posts the call again (the event ids make the retry safe).

The service checks in a process of its own per worker (:class:`Checker`, ``python -m
serving.ingest``). The contract's pandas steps cost about 11 ms of a call of 25 events, and in
a thread of the worker they held the interpreter lock while the worker's rankings waited for
it at every step that releases it: with 2% of the load posting events, the blend's /rank p99
at 300 req/s on 2 workers was 50 ms, and 15 ms in the same trial with the check left out.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Container
from datetime import datetime
from typing import IO, Any

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.contract import validate_events
from serving.schemas import EventIn


class BadEvents(ValueError):
    """Events that break the contract: their index in the call and the reason (answered
    with 400 and the list)."""

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


READY_SECONDS = 60  # for the checking process's imports


class Checker:
    """:func:`event_rows` in a process of its own (about 120 MB), started with the worker
    (:meth:`start`) and again if it ends; calls from the worker's threads take turns. The
    process says when its imports are done (about 2 s of a core, which the worker's
    readiness waits for: a loaded worker would otherwise share its cores with them), reads
    calls from its standard input and ends when the worker closes it (or dies)."""

    def __init__(self) -> None:
        self._turn = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._ready = False  # the process of ``_child`` said it is ready

    def rows(self, events: list[EventIn], products: Container[str], now: datetime
             ) -> list[dict[str, Any]]:
        """:func:`event_rows` of the call; :class:`BadEvents` for a call that breaks the
        contract."""
        # the call's own products are all the check looks up: not the whole catalogue
        known = {event.product_id for event in events if event.product_id in products}
        call = pickle.dumps((events, known, now), protocol=pickle.HIGHEST_PROTOCOL)
        with self._turn:
            try:
                answer = self._ask(call)
            except (OSError, EOFError):  # the process ended (killed, out of memory): anew
                self._stop()
                answer = self._ask(call)
        kind, value = pickle.loads(answer)
        if kind == "bad":
            raise BadEvents(value)
        if kind == "failed":
            raise RuntimeError(f"the events check failed:\n{value}")
        return value  # type: ignore[no-any-return]

    @property
    def ready(self) -> bool:
        """Whether the process has done its imports (see :meth:`start`)."""
        return self._ready

    def start(self) -> None:
        """Start the process now; :attr:`ready` turns true once it has done its imports."""
        with self._turn:
            if self._child is None:
                self._start()
        threading.Thread(target=self._await_ready, name="nbo-events-check",
                         daemon=True).start()

    def _await_ready(self) -> None:
        with self._turn:
            child = self._child
            if child is not None and not self._ready:
                self._ready_of(child)

    def _ready_of(self, child: subprocess.Popen[bytes]) -> None:
        """Wait for the process's word that it is ready (at most ``READY_SECONDS``)."""
        assert child.stdout is not None
        if not select.select([child.stdout], [], [], READY_SECONDS)[0]:
            raise RuntimeError(f"the events check process was not ready within "
                               f"{READY_SECONDS} s")
        said = pickle.loads(_received(child.stdout))
        if said != ("ready", None):
            raise RuntimeError(f"the events check process said {said!r} instead of ready")
        self._ready = True

    def _ask(self, call: bytes) -> bytes:
        child = self._child or self._start()
        assert child.stdin is not None and child.stdout is not None
        if not self._ready:
            self._ready_of(child)
        _send(child.stdin, call)
        return _received(child.stdout)

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._ready = False
        self._child = subprocess.Popen([sys.executable, "-m", "serving.ingest"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        return self._child

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            if child.stdin is not None:
                # a pipe that broke with the process: it is gone already
                with contextlib.suppress(OSError):
                    child.stdin.close()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def close(self) -> None:
        with self._turn:
            self._stop()


def _send(pipe: IO[bytes], message: bytes) -> None:
    pipe.write(struct.pack("<Q", len(message)) + message)
    pipe.flush()


def _received(pipe: IO[bytes]) -> bytes:
    size = pipe.read(8)
    if len(size) < 8:
        raise EOFError("the events check process ended")
    length = struct.unpack("<Q", size)[0]
    message = pipe.read(length)
    if len(message) < length:
        raise EOFError("the events check process ended mid-message")
    return message


def _serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The checking process: its word that it is ready, then calls in and answers out,
    until the worker closes the pipe."""
    _send(sink, pickle.dumps(("ready", None)))
    while True:
        try:
            call = _received(source)
        except EOFError:
            return
        events, products, now = pickle.loads(call)
        try:
            answer: tuple[str, Any] = ("rows", event_rows(events, products, now))
        except BadEvents as bad:
            answer = ("bad", bad.bad)
        except Exception:  # the worker raises it for the call; this process goes on
            answer = ("failed", traceback.format_exc())
        _send(sink, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed goes to the worker's log, not into an answer
    _serve(sys.stdin.buffer, answers)
