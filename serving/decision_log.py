"""The decision log: every list nbo serves, which attribution, lift reports and off-policy
estimates read.

A row per answer (a ranking, a list of similar offers, a letter, a sent trigger decision):
its request id, a keyed token of the customer (never the id), the channel and endpoint, the
experiment and arm (none while no experiment runs), the model and policy versions, the moment,
and the offers with their position, score, priority and the probability with which each was
chosen (1 while nbo chooses without exploring).

Each process writes its rows in batches from a thread of its own, every ``FLUSH_SECONDS`` or
as soon as ``BATCH`` rows wait, and when it stops: an answer never waits for the write, and a
process that is killed loses the rows of its last ``FLUSH_SECONDS``. Rows of a customer erased
meanwhile are dropped at the write. Once an hour a sweep deletes rows older than the retention
(``NBO_DECISION_LOG_DAYS``) and any of an erased customer that another process wrote in the
instant of the erasure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from serving.assignment import CONTROL, CONTROL_GROUP
from serving.newsletter import Letter
from serving.reasons import EXPLORED
from serving.requests import Ranking
from serving.store import Store

FLUSH_SECONDS = 0.5
BATCH = 500
MAX_WAITING = 200_000  # rows kept while the store cannot be written; older ones are dropped
SWEEP_SECONDS = 3600.0
log = logging.getLogger(__name__)


Assigned = tuple[str, str]  # an experiment and the customer's arm in it


def labels(control_arm: str | None, assigned: Assigned | None) -> dict[str, str | None]:
    """The experiment and arm a list is logged under: the universal control group for its
    members (who stay out of every experiment), else the running experiment's arm, else the
    personalised side of the control group where there is one."""
    if control_arm == CONTROL or (control_arm and assigned is None):
        return {"experiment": CONTROL_GROUP, "arm": control_arm}
    experiment, arm = assigned or (None, None)
    return {"experiment": experiment, "arm": arm}


def ranking_row(ranking: Ranking, channel: str, endpoint: str, at: datetime,
                assigned: Assigned | None = None) -> dict[str, Any]:
    """The log's row of a ranking (``/rank``, ``/similar``, a trigger decision)."""
    return {"request_id": ranking.request_id, "customer_id": ranking.customer_id or None,
            "channel": channel, "endpoint": endpoint, "model_version": ranking.model_version,
            "policy_version": ranking.policy_version, "decided_at": at,
            "stage": ranking.lifecycle_stage or None, **labels(ranking.arm, assigned),
            "offers": [{"product_id": o.product_id, "position": o.rank, "score": o.score,
                        "priority": ranking.priorities[n] if ranking.priorities else None,
                        "probability": ranking.probabilities[n] if ranking.probabilities
                        else 1.0, "explored": o.reason == EXPLORED, "reason": o.reason}
                       for n, o in enumerate(ranking.offers)]}


def letter_rows(letters: Iterable[Letter], request_id: str, model_version: str,
                policy_version: str, endpoint: str, at: datetime,
                assigned: Mapping[str, Assigned] | None = None,
                versions: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The log's rows of a newsletter: one per letter with offers, positions counted
    through its blocks. ``assigned`` and ``versions``: each customer's experiment arm and
    the model version that wrote their letter, where an experiment runs."""
    assigned, versions = assigned or {}, versions or {}
    return [{"request_id": request_id, "customer_id": letter.customer_id, "channel": "email",
             "endpoint": endpoint,
             "model_version": versions.get(letter.customer_id, model_version),
             "policy_version": policy_version, "decided_at": at,
             "stage": letter.lifecycle_stage,
             **labels(letter.arm, assigned.get(letter.customer_id)),
             "offers": [{"product_id": b.product_id, "position": n + 1, "score": b.score,
                         "block": b.block, "priority": None, "probability": 1.0,
                         "reason": b.reason}
                        for n, b in enumerate(letter.blocks)]}
            for letter in letters if letter.blocks]


class DecisionLog:
    """Rows waiting for their batch, and the thread that writes them (none with a retention
    of 0 days: nothing is logged)."""

    def __init__(self, store: Store, retention_days: float,
                 clock: Callable[[], datetime] | None = None,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.store, self.retention_days = store, retention_days
        self.clock = clock or datetime.now
        self._waiting: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        if retention_days > 0:
            self._thread = threading.Thread(target=self._run, args=(flush_seconds,),
                                            name="nbo-decision-log", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.retention_days > 0

    def record(self, rows: Iterable[dict[str, Any]]) -> None:
        """Queue rows for the next batch; the call never writes."""
        if not self.enabled:
            return
        with self._lock:
            self._waiting.extend(rows)
            full = len(self._waiting) >= BATCH
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write what waits, in one transaction; how many rows were stored. Rows the store
        refused are kept for the next try (the oldest dropped past ``MAX_WAITING``)."""
        with self._lock:
            rows = list(self._waiting)
            self._waiting.clear()
        if not rows:
            return 0
        try:
            return self.store.log_decisions(rows)
        except Exception:
            with self._lock:
                self._waiting.extendleft(reversed(rows))
                dropped = max(0, len(self._waiting) - MAX_WAITING)
                for _ in range(dropped):
                    self._waiting.popleft()
            if dropped:
                log.error("the decision log dropped its %d oldest rows: the store has not "
                          "taken them", dropped)
            raise

    def sweep(self) -> int:
        """Delete rows past the retention and those of erased customers; how many."""
        return self.store.sweep_decisions(self.clock() - timedelta(days=self.retention_days))

    def close(self) -> None:
        """Stop the thread and write what waits; rows the store does not take then are
        lost, and the error log says how many."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.enabled:
            return
        try:
            self.flush()
        except Exception as failed:  # stopping: nothing is left to try again
            log.error("the decision log lost %d rows at shutdown: %s", len(self._waiting),
                      type(failed).__name__)

    def _run(self, flush_seconds: float) -> None:
        next_sweep = time.monotonic() + SWEEP_SECONDS
        while not self._stop.is_set():
            self._wake.wait(flush_seconds)
            self._wake.clear()
            try:
                self.flush()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                    self.sweep()
            except Exception:  # the store may be back on the next round; the rows wait
                log.exception("the decision log could not write; tried again in %gs",
                              flush_seconds)
