"""The service's database through SQLAlchemy: consents with their audit trail, the live
events a storefront posts, the feedback log, and erasures. A SQLite file by default,
PostgreSQL by setting a ``postgresql+psycopg://`` URL; several service processes may share
one database.

Every write commits before it returns, so an acknowledged change or feedback call is durable;
every read goes to the database, so a change is effective on the next request in every worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from features.columns import FEEDBACK_ACTIONS, MESSAGING_CHANNELS, PURPOSES
from features.columns import Columns as C
from serving.experiments import Experiment, ExperimentError, Status
from serving.policy import Consent
from serving.prepared import Prepared

T = TypeVar("T")
log = logging.getLogger(__name__)


class Exposure(NamedTuple):
    """A customer's responses to served offers: parallel per product."""

    product_ids: list[str]
    shown: np.ndarray  # impressions in the contact window
    clicked: np.ndarray  # clicked or bought in the contact window
    dismissed: np.ndarray  # dismissed within the rest time (bool)
    converted_ns: np.ndarray  # latest conversion, int64 ns (NO_TIME: none)


NO_TIME = np.iinfo(np.int64).min
NO_EXPOSURE = Exposure([], np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool),
                       np.zeros(0, np.int64))
metadata = MetaData()
consents = Table(
    "consents", metadata,
    Column("customer_id", String(128), primary_key=True),
    Column("purpose", String(32), primary_key=True),
    Column("granted", Boolean, nullable=False),
    Column("double_opt_in", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime, nullable=False),
    Column("source", String(64), nullable=False),
)
consent_changes = Table(
    "consent_changes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(128), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("double_opt_in", Boolean, nullable=False),
    Column("previous", String(16), nullable=False),  # granted / denied / none
    Column("changed_at", DateTime, nullable=False),
    Column("source", String(64), nullable=False),
)
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(128), nullable=False),
    Column("product_id", String(128), nullable=False),
    Column("action", String(16), nullable=False),
    Column("channel", String(16), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("position", Float, nullable=True),
    Column("model_version", String(32), nullable=True),
    Column("timestamp", DateTime, nullable=False),
    Column("received_at", DateTime, nullable=False),
    Index("feedback_customer_time", "customer_id", "timestamp"),
)
# one response per served offer and action: a retried feedback call is stored once (rows
# without a request id are not deduplicated; NULLs are distinct in a unique index)
# a newsletter's request id covers many customers: a retry is the same customer's
FEEDBACK_ONCE = Index("feedback_once_per_customer", feedback.c.request_id,
                      feedback.c.customer_id, feedback.c.product_id, feedback.c.action,
                      unique=True)
FEEDBACK_ONCE_BEFORE = "feedback_once"  # the index without the customer, of older stores
events = Table(  # what the storefront posts to /events, in the data contract's columns
    "events", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # order of arrival
    Column("event_id", String(128), nullable=False, unique=True),  # the client's key
    Column("customer_id", String(128), nullable=False),
    Column("product_id", String(128), nullable=False),
    Column("event_type", String(16), nullable=False),
    Column("timestamp", DateTime, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("rating", Float, nullable=True),
    Column("order_id", String(128), nullable=True),
    Column("channel", String(16), nullable=True),
    Column("received_at", DateTime, nullable=False),
    Index("events_customer_time", "customer_id", "timestamp"),
)
erasures = Table(
    "erasures", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("erased_at", DateTime, nullable=False),
    Column("source", String(64), nullable=False),
    Column("removed", Text, nullable=False),  # JSON counts per kind of data; no identifiers
)
suppressed = Table(  # keyed hashes of erased ids, so a reloaded model does not bring them back
    "suppressed", metadata,
    Column("token", String(64), primary_key=True),
)
returned = Table(  # erased customers who gave consent again: a new customer from then on
    "returned", metadata,
    Column("token", String(64), primary_key=True),
    Column("returned_at", DateTime, nullable=False),
)
settings_table = Table(
    "store_settings", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
policies = Table(  # the offer policy every worker and replica ranks with: the newest row
    "policies", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
)
decision_log = Table(  # every list served: what attribution and lift reports read
    "decision_log", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("token", String(64), nullable=True),  # keyed hash of the customer, none for nobody
    Column("channel", String(16), nullable=False),
    Column("endpoint", String(16), nullable=False),
    Column("experiment", String(64), nullable=True),
    Column("arm", String(64), nullable=True),
    Column("model_version", String(32), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("decided_at", DateTime, nullable=False),
    Column("offers", Text, nullable=False),  # JSON: product, position, score, priority, ...
    Column("stage", String(16), nullable=True),  # the customer's lifecycle stage then
    Index("decision_token", "token", "decided_at"),
    Index("decision_moment", "decided_at"),
    Index("decision_experiment", "experiment", "decided_at"),
)
ADDED_COLUMNS = {"decision_log": [decision_log.c.stage]}  # added to stores made before them
experiments = Table(  # experiments and their arms; at most one running
    "experiments", metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", Text, nullable=False),  # JSON: arms, salt, minimum sample
    Column("status", String(16), nullable=False),
    # 1 while running, else NULL: unique, so a second running experiment is refused atomically
    Column("running", Integer, nullable=True, unique=True),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime, nullable=True),
    Column("stopped_at", DateTime, nullable=True),
)
RESERVE_BLOCK = 20  # impressions a process takes from a budget at once, fewer near its limit
budget_counts = Table(  # what each budget of the offer policy has used, per period
    "budget_counts", metadata,
    Column("budget", String(64), primary_key=True),
    Column("period", String(16), primary_key=True),
    Column("used", Integer, nullable=False),
)
decisions = Table(  # the triggers' occasions and what became of them: the triggers' feed
    "trigger_decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("trigger", String(64), nullable=False),
    Column("occasion", String(400), nullable=False),  # what it is about, once per trigger
    Column("customer_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("subject", Text, nullable=False),  # JSON: the products or category it is about
    Column("since", DateTime, nullable=False),  # the event or crossing it started with
    Column("latest", DateTime, nullable=False),  # its newest event (a cart's last addition)
    Column("due_at", DateTime, nullable=False),
    Column("status", String(16), nullable=False),  # pending, sent or dropped
    Column("reason", String(200), nullable=True),  # why dropped
    Column("offers", Text, nullable=True),  # JSON: the offers decided on
    Column("decided_at", DateTime, nullable=True),
    Column("cursor", BigInteger, nullable=True, unique=True),  # its place in the feed
    Column("policy_version", String(64), nullable=True),
    Column("model_version", String(32), nullable=True),
    Index("trigger_occasion", "trigger", "customer_id", "occasion", unique=True),
    Index("trigger_due", "status", "due_at"),
    Index("trigger_customer", "customer_id", "status"),
)
leases = Table(  # work that one process at a time does for all, e.g. settling triggers
    "leases", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", DateTime, nullable=False),
)
console_sessions = Table(  # the console's logins: the hash of each cookie, never the cookie
    "console_sessions", metadata,
    Column("digest", String(64), primary_key=True),
    Column("csrf", String(64), nullable=False),  # the forms' token of the session
    Column("key_digest", String(64), nullable=False),  # which admin key logged in (hashed)
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
)
PENDING, SENT, DROPPED = "pending", "sent", "dropped"

MIN_KEY_LENGTH = 16
KEY_CHECK, LEGACY_KEY = "erasure_key_check", "erasure_key"  # rows of store_settings
DATASET_KEY = "dataset"  # the dataset the store serves: the first served model's

# the per-request reads, built once: a statement built per call costs more than the query
IDS_AT_ONCE = 900  # ids per query, under SQLite's bound-parameter limit
_CUSTOMERS: BindParameter[str] = bindparam("customers", expanding=True)
_CUSTOMER: BindParameter[str] = bindparam("customer")
Match = Callable[[ColumnElement[str]], ColumnElement[bool]]
# a many-customer read -> the same read of one customer, which a request makes: an expanding
# IN list is rendered anew on every execution, an equality is compiled once
_ONE: dict[Select[Any], Select[Any]] = {}


def _among(column: ColumnElement[str]) -> ColumnElement[bool]:
    return column.in_(_CUSTOMERS)


def _the_one(column: ColumnElement[str]) -> ColumnElement[bool]:
    return column == _CUSTOMER


def _per_customer(build: Callable[[Match], Select[Any]]) -> Select[Any]:
    """``build``'s statement for a list of customers (the ``customers`` parameter), with its
    variant for one (``customer``) kept for :meth:`Store._rows_for`."""
    many = build(_among)
    _ONE[many] = build(_the_one)
    return many


CONSENT_ROWS = _per_customer(lambda match: select(
    consents.c.customer_id, consents.c.purpose, consents.c.granted, consents.c.double_opt_in
).where(match(consents.c.customer_id)))
_IN_WINDOW = feedback.c.timestamp >= bindparam("window")
EXPOSURE_ROWS = _per_customer(lambda match: (
    select(feedback.c.customer_id, feedback.c.product_id,
           func.sum(case(((feedback.c.action == "impression") & _IN_WINDOW, 1), else_=0)
                    ).label("shown"),
           # two comparisons, not IN: a list is rendered anew on every execution
           func.max(case((((feedback.c.action == "click") | (feedback.c.action == "conversion"))
                          & _IN_WINDOW, 1), else_=0)).label("clicked"),
           func.max(case(((feedback.c.action == "dismiss")
                          & (feedback.c.timestamp >= bindparam("rest")), 1), else_=0)
                    ).label("dismissed"),
           func.max(case(((feedback.c.action == "conversion")
                          & (feedback.c.timestamp >= bindparam("as_of")), feedback.c.timestamp),
                         else_=None)).label("converted"))
    .where(match(feedback.c.customer_id)
           & (feedback.c.timestamp >= bindparam("since"))
           & (feedback.c.timestamp <= bindparam("until")))
    .group_by(feedback.c.customer_id, feedback.c.product_id)))
_NEWEST_FIRST = (events.c.timestamp.desc(), events.c.seq.desc())
_LATEST = (func.row_number().over(partition_by=events.c.customer_id, order_by=_NEWEST_FIRST)
           .label("latest"))


class LiveEvent(NamedTuple):
    customer_id: str
    product_id: str
    event_type: str
    timestamp: datetime
    quantity: int
    rating: float | None


LIVE_FIELDS = len(LiveEvent._fields)
_EVENT_COLUMNS = tuple(events.c[name] for name in LiveEvent._fields)


def _since_snapshot(match: Match) -> ColumnElement[bool]:
    return (match(events.c.customer_id) & (events.c.timestamp >= bindparam("as_of"))
            & (events.c.timestamp <= bindparam("until")))


def _latest_events(match: Match) -> Select[Any]:
    recent = select(*_EVENT_COLUMNS, _LATEST).where(_since_snapshot(match)).subquery()
    return select(recent).where(recent.c.latest <= bindparam("limit"))


EVENT_ROWS = _latest_events(_among)
# one customer's needs no window: the index on (customer, time) gives them newest first, and
# the window function took half of the read of 25 events (110 against 57 us on SQLite)
_ONE[EVENT_ROWS] = (select(*_EVENT_COLUMNS)
                    .where(_since_snapshot(_the_one))
                    .order_by(*_NEWEST_FIRST)
                    .limit(bindparam("limit")))
ERASED = select(suppressed.c.token).where(suppressed.c.token == bindparam("token"))
_BETWEEN: tuple[BindParameter[datetime], BindParameter[datetime]] = (
    bindparam("start"), bindparam("end"))
VIEW_ROWS = select(events.c.customer_id, events.c.product_id, events.c.timestamp).where(
    events.c.customer_id.in_(_CUSTOMERS) & (events.c.event_type == "view")
    & events.c.timestamp.between(*_BETWEEN))
PURCHASES = select(events.c.customer_id, events.c.product_id, events.c.timestamp).where(
    (events.c.event_type == "purchase") & events.c.timestamp.between(*_BETWEEN)).union_all(
    select(feedback.c.customer_id, feedback.c.product_id, feedback.c.timestamp).where(
        (feedback.c.action == "conversion") & feedback.c.timestamp.between(*_BETWEEN)))
_OF_CUSTOMERS = PURCHASES.subquery()
PURCHASE_ROWS = select(_OF_CUSTOMERS).where(_OF_CUSTOMERS.c.customer_id.in_(_CUSTOMERS))
RECENT_OCCASIONS = select(decisions.c.customer_id).distinct().where(
    decisions.c.customer_id.in_(_CUSTOMERS) & (decisions.c.trigger == bindparam("trigger"))
    & (decisions.c.since >= bindparam("since")))
PENDING_OCCASIONS = select(decisions).where(
    decisions.c.customer_id.in_(_CUSTOMERS) & (decisions.c.trigger == bindparam("trigger"))
    & (decisions.c.status == PENDING))
SENT_COUNTS = select(decisions.c.customer_id, func.count().label("sent")).where(
    decisions.c.customer_id.in_(_CUSTOMERS) & (decisions.c.status == "sent")
    & (decisions.c.decided_at >= bindparam("since"))).group_by(decisions.c.customer_id)
EVENT_COLUMNS = ("customer_id", "product_id", "event_type", "timestamp", "quantity", "rating",
                 "order_id", "channel")


class StoredPolicy(NamedTuple):
    id: int
    version: str
    text: str
    source: str
    created_at: datetime


@dataclass(frozen=True)
class Window:
    """The moments a customer's feedback is read against: impressions and clicks count from
    ``window``, dismissals rest offers from ``rest``, conversions after ``as_of`` (the
    model's snapshot) count as purchases; nothing after ``until`` (the request's moment: a
    replay or an estimate at a past moment sees only what had happened by then)."""

    window: datetime
    rest: datetime
    as_of: datetime
    until: datetime = datetime.max

    @property
    def since(self) -> datetime:
        return min(self.window, self.rest, self.as_of)


@dataclass(frozen=True)
class Appended:
    """What an append did: rows new to the store and rows it held already (a retry)."""

    stored: int
    duplicates: int
    erased: int = 0  # rows of erased customers, not stored


@dataclass(frozen=True)
class Erasure:
    erasure_id: int
    removed: dict[str, int]


class Store:
    """Consents, feedback and erasures in one SQLAlchemy database.

    ``erasure_key`` keys the hashes that keep erased customers erased (``NBO_ERASURE_KEY``):
    it is never written to the database, which holds only a check value, so a store opened
    with another key is refused instead of letting erased customers come back. A 64-digit
    hex key is taken as its bytes (``nbo store key`` makes one), any other text as is."""

    def __init__(self, url: str, erasure_key: str) -> None:
        if len(erasure_key) < MIN_KEY_LENGTH:
            raise ValueError(f"the erasure key (NBO_ERASURE_KEY) must have at least "
                             f"{MIN_KEY_LENGTH} characters; 'nbo store key' makes one")
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        dialects: dict[str, Callable[[Table], sqlite.Insert | postgresql.Insert]] = {
            "sqlite": sqlite.insert, "postgresql": postgresql.insert}
        if self.engine.dialect.name not in dialects:
            raise ValueError(f"{self.engine.dialect.name} is not supported for the store: "
                             "use a sqlite:/// or postgresql+psycopg:// URL")
        self._insert = dialects[self.engine.dialect.name]
        # budget counts and the decision log go through connections of their own: on SQLite
        # without an fsync per write (neither is acknowledged to anyone; a power cut may
        # lose the last ones)
        self.counts: Engine = self.engine
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self.counts = create_engine(url, future=True)
            event.listen(self.counts, "connect", _sqlite_count_pragmas)
        settled(lambda: metadata.create_all(self.engine))
        # a store made before the index or a column existed gets it too
        settled(lambda: FEEDBACK_ONCE.create(self.engine, checkfirst=True))
        settled(self._drop_old_indexes)
        settled(self._add_columns)
        self._key = key_bytes(erasure_key)
        settled(self._check_key)
        # impressions this process took from budgets and has not served yet
        self._reserved: Counter[tuple[str, str]] = Counter()
        self._reserve_lock = threading.Lock()
        self._answer_db: ContextVar[Connection | None] = ContextVar(
            f"nbo-store-{id(self)}", default=None)
        # a request's reads, compiled for this database once: each many-customer read's
        # one-customer variant, and the erasure check
        self._one = {many: Prepared(one, self.engine.dialect) for many, one in _ONE.items()}
        self._erased = Prepared(ERASED, self.engine.dialect)

    def close(self) -> None:
        try:
            self.give_back()
        except (OperationalError, ProgrammingError) as failed:  # the database went first
            log.warning("budget impressions held in reserve were not given back (%s)",
                        type(failed).__name__)
        self.engine.dispose()
        self.counts.dispose()

    # --- consents -----------------------------------------------------------------------

    def seed_consents(self, frame: pd.DataFrame, label: str) -> int:
        """Load a dataset's consents once per ``label`` (its fingerprint); records the store
        already holds (changed through the API since) are kept, erased customers skipped."""
        return settled(lambda: self._seed(frame, label))

    def _seed(self, frame: pd.DataFrame, label: str) -> int:
        key = f"seeded:{label}"
        with self.engine.begin() as db:
            if db.execute(select(settings_table.c.key).where(settings_table.c.key == key)
                          ).first():
                return 0
            rows = frame[[C.customer, C.purpose, C.granted, C.double_opt_in, C.updated_at,
                          C.source]].copy()
            rows[C.customer] = rows[C.customer].astype(str)
            rows = rows.sort_values(C.updated_at).drop_duplicates([C.customer, C.purpose],
                                                                   keep="last")
            held = {(r.customer_id, r.purpose) for r in db.execute(
                select(consents.c.customer_id, consents.c.purpose))}
            gone = {r.token for r in db.execute(select(suppressed.c.token))}
            given: Iterator[Any] = rows.itertuples(index=False)  # each column as stored
            records = [
                {"customer_id": r.customer_id, "purpose": r.purpose, "granted": bool(r.granted),
                 "double_opt_in": bool(r.double_opt_in) if pd.notna(r.double_opt_in) else False,
                 "updated_at": pd.Timestamp(r.updated_at).to_pydatetime(),
                 "source": str(r.source) if pd.notna(r.source) else "dataset"}
                for r in given
                if (r.customer_id, r.purpose) not in held and self.token(r.customer_id) not in gone
            ]
            for start in range(0, len(records), 5_000):
                db.execute(insert(consents), records[start:start + 5_000])
            db.execute(insert(settings_table), [{"key": key, "value": str(len(records))}])
        return len(records)

    def consent(self, customer_id: str, personalization_default: bool) -> Consent:
        return self.consents_of([customer_id], personalization_default)[customer_id]

    def consents_of(self, customer_ids: Iterable[str], personalization_default: bool
                    ) -> dict[str, Consent]:
        """Effective consent per customer: personalisation from the setting where the customer
        has no record of it; messaging channels and sensitive offers never assumed."""
        return self.consents_and_holders(customer_ids, personalization_default)[0]

    def consents_and_holders(self, customer_ids: Iterable[str], personalization_default: bool
                             ) -> tuple[dict[str, Consent], set[str]]:
        """:meth:`consents_of`, and the customers among them the store holds any consent
        record of, from the same read."""
        ids = list(dict.fromkeys(customer_ids))
        records: dict[str, dict[str, tuple[bool, bool]]] = {cid: {} for cid in ids}
        for row in self._rows_for(CONSENT_ROWS, ids):
            records[row.customer_id][row.purpose] = (row.granted, row.double_opt_in)
        return ({cid: _effective(held, personalization_default)
                 for cid, held in records.items()},
                {cid for cid, held in records.items() if held})

    def _rows_for(self, statement: Select[Any], customer_ids: Iterable[str], **params: Any
                  ) -> list[Row[Any]]:
        """``statement``'s rows for each distinct customer id (its ``customers`` parameter),
        queried ``IDS_AT_ONCE`` ids at a time; one id through its one-customer variant."""
        ids = list(dict.fromkeys(customer_ids))
        one = self._one.get(statement)
        with self._reader() as db:
            if len(ids) == 1 and one is not None:
                return one.rows(db, {"customer": ids[0], **params})
            rows: list[Row[Any]] = []
            for start in range(0, len(ids), IDS_AT_ONCE):
                rows.extend(db.execute(statement, {"customers": ids[start:start + IDS_AT_ONCE],
                                                   **params}).all())  # not row by row
        return rows

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One connection for the store reads of one answer (its consent, erasure, exposure
        and live events) in this thread or task; a connection per read cost twice the read.
        Writes keep their own transactions."""
        if self._answer_db.get() is not None:
            yield
            return
        with self.engine.connect() as db:
            token = self._answer_db.set(db)
            try:
                yield
            finally:
                self._answer_db.reset(token)

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        """The connection :meth:`reading` holds, else one of its own."""
        held = self._answer_db.get()
        if held is not None:
            yield held
            return
        with self.engine.connect() as db:
            yield db

    def set_consents(self, customer_id: str, changes: dict[str, tuple[bool, bool]],
                     source: str, at: datetime) -> list[dict[str, Any]]:
        """Apply ``{purpose: (granted, double_opt_in)}`` and log each change in the trail."""
        unknown = sorted(set(changes) - set(PURPOSES))
        if unknown:
            raise ValueError(f"unknown consent purpose(s) {unknown}; known: {list(PURPOSES)}")
        return settled(lambda: self._set_consents(customer_id, changes, source, at))

    def _set_consents(self, customer_id: str, changes: dict[str, tuple[bool, bool]],
                      source: str, at: datetime) -> list[dict[str, Any]]:
        trail = []
        with self.engine.begin() as db:
            for purpose, (granted, double_opt_in) in changes.items():
                values = {"granted": granted, "double_opt_in": double_opt_in,
                          "updated_at": at, "source": source}
                # insert if new; otherwise lock the row, read what it was and update it, so
                # concurrent changes queue up and each one's trail names the one before
                created = db.execute(
                    self._insert(consents).values(customer_id=customer_id, purpose=purpose,
                                                  **values)
                    .on_conflict_do_nothing().returning(consents.c.purpose)).first()
                previous = "none"
                if created is None:
                    key = (consents.c.customer_id == customer_id) & \
                        (consents.c.purpose == purpose)
                    old = db.execute(select(consents.c.granted).where(key).with_for_update()
                                     ).one()  # erased in between: raises, the call fails
                    previous = "granted" if old.granted else "denied"
                    db.execute(update(consents).where(key).values(**values))
                change = {"customer_id": customer_id, "purpose": purpose, "granted": granted,
                          "double_opt_in": double_opt_in, "previous": previous,
                          "changed_at": at, "source": source}
                db.execute(insert(consent_changes), [change])
                trail.append(change)
            token = self.token(customer_id)
            if db.execute(ERASED, {"token": token}).first() is not None and not db.execute(
                    select(returned.c.token).where(returned.c.token == token)).first():
                db.execute(insert(returned), [{"token": token, "returned_at": at}])
        return trail

    def consent_records(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's consent records as kept: one per purpose they gave or refused."""
        with self.engine.connect() as db:
            return [dict(row) for row in db.execute(select(consents).where(
                consents.c.customer_id == customer_id).order_by(consents.c.purpose))
                .mappings()]

    def consent_trail(self, customer_id: str) -> pd.DataFrame:
        with self.engine.connect() as db:
            query = select(consent_changes).where(consent_changes.c.customer_id == customer_id
                                                  ).order_by(consent_changes.c.id)
            return pd.DataFrame(db.execute(query).mappings().all())

    # --- feedback -----------------------------------------------------------------------

    def append_feedback(self, rows: list[dict[str, Any]], received_at: datetime,
                        budgets: Callable[[list[dict[str, Any]]], list[tuple[str, str]]]
                        | None = None) -> Appended:
        """Store feedback rows in one transaction; a row with the (request_id, customer_id,
        product_id, action) of a stored one is a retry and is not stored again. ``budgets``
        gives, for the rows new to the store, the (budget, period) each counts in
        (conversions), which are counted in the same transaction: once, as the rows are
        stored once."""
        return settled(lambda: self._append(feedback, rows, received_at,
                                            ("request_id", "customer_id", "product_id",
                                             "action"), budgets))

    def append_events(self, rows: list[dict[str, Any]], received_at: datetime) -> Appended:
        """Store live events (the contract's columns and a client's ``event_id``) in one
        transaction, committed before this returns; an ``event_id`` the store holds is a
        retry and is not stored again; events of erased customers are not stored."""
        return settled(lambda: self._append(events, rows, received_at, ("event_id",)))

    def _append(self, table: Table, rows: list[dict[str, Any]], received_at: datetime,
                key: tuple[str, ...],
                budgets: Callable[[list[dict[str, Any]]], list[tuple[str, str]]] | None = None
                ) -> Appended:
        if not rows:
            return Appended(0, 0)
        gone = self.erased_among((row["customer_id"] for row in rows), returned_too=False)
        fresh = [row for row in rows if row["customer_id"] not in gone]
        seen: set[tuple[Any, ...]] = set()
        unique = []  # a key twice in one call is stored once; rows without a key all are
        for row in fresh:
            keyed = tuple(row.get(c) for c in key)
            if None not in keyed:
                if keyed in seen:
                    continue
                seen.add(keyed)
            unique.append(row)
        with self.engine.begin() as db:
            held = self._held(db, table, key, unique)
            new = [{**row, "received_at": received_at} for row in unique
                   if tuple(row.get(c) for c in key) not in held]
            for start in range(0, len(new), 2_000):
                # a writer that raced us to a key makes this transaction fail: settled()
                # runs it again and it then counts that row as held
                db.execute(insert(table), new[start:start + 2_000])
            if budgets is not None and new:
                self._count(db, budgets(new))
        return Appended(len(new), len(fresh) - len(new), len(rows) - len(fresh))

    @staticmethod
    def _held(db: Any, table: Table, key: tuple[str, ...], rows: list[dict[str, Any]]
              ) -> set[tuple[Any, ...]]:
        """The keys among ``rows`` the table holds already (rows without a full key never
        match: they are always new)."""
        keyed = [row for row in rows if all(row.get(c) is not None for c in key)]
        held: set[tuple[Any, ...]] = set()
        first = table.c[key[0]]
        for start in range(0, len(keyed), IDS_AT_ONCE):
            values = list({row[key[0]] for row in keyed[start:start + IDS_AT_ONCE]})
            found = db.execute(select(*(table.c[c] for c in key)).where(first.in_(values)))
            held.update(tuple(r) for r in found)
        return held

    def exposure(self, customer_id: str, window: Window) -> Exposure:
        """Per product: impressions and whether it was clicked or bought in the contact
        window, whether it was dismissed within the rest time, and its latest conversion
        after the model's snapshot."""
        return self.exposures([customer_id], window).get(customer_id, NO_EXPOSURE)

    def exposures(self, customer_ids: list[str], window: Window) -> dict[str, Exposure]:
        """:meth:`exposure` for many customers in one query per 900 ids."""
        rows = self._rows_for(EXPOSURE_ROWS, customer_ids, since=window.since,
                              window=window.window, rest=window.rest, as_of=window.as_of,
                              until=window.until)
        grouped: dict[str, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row.customer_id, []).append(row)
        return {cid: Exposure([r.product_id for r in part],
                              np.array([r.shown for r in part], dtype=np.int64),
                              np.array([bool(r.clicked) for r in part], dtype=bool),
                              np.array([bool(r.dismissed) for r in part], dtype=bool),
                              np.array([_ns(r.converted) for r in part], dtype=np.int64))
                for cid, part in grouped.items()}

    # --- live events --------------------------------------------------------------------

    def live_events(self, customer_ids: list[str], as_of: datetime, until: datetime,
                    limit: int) -> dict[str, list[LiveEvent]]:
        """Per customer, their latest ``limit`` events from ``as_of`` (the model's snapshot)
        to ``until``, newest first."""
        rows = self._rows_for(EVENT_ROWS, customer_ids, as_of=as_of, until=until, limit=limit)
        grouped: dict[str, list[LiveEvent]] = {}
        for row in rows:  # the statements' first columns are LiveEvent's, in its order
            event = LiveEvent._make(row[:LIVE_FIELDS])
            if event.timestamp.tzinfo is not None:
                event = event._replace(timestamp=_naive(event.timestamp))
            grouped.setdefault(row.customer_id, []).append(event)
        for part in grouped.values():
            part.sort(key=lambda e: e.timestamp, reverse=True)
        return grouped

    def events_frame(self, after: int = 0) -> tuple[pd.DataFrame, int]:
        """Events stored after sequence number ``after``, in the contract's columns, and the
        last sequence number read (``after`` when there are none)."""
        with self.engine.connect() as db:
            rows = db.execute(select(events.c.seq, *(events.c[c] for c in EVENT_COLUMNS))
                              .where(events.c.seq > after).order_by(events.c.seq)).all()
        frame = pd.DataFrame([r[1:] for r in rows], columns=list(EVENT_COLUMNS))
        return frame, int(rows[-1].seq) if rows else after

    def feedback_frame(self, after: int = 0) -> pd.DataFrame:
        """The feedback log after row ``after`` in the data contract's ``feedback`` columns,
        with each row's ``id``."""
        columns = [C.customer, C.product, C.action, C.channel, C.request_id, C.position,
                   C.model_version, C.timestamp]
        with self.engine.connect() as db:
            rows = db.execute(select(feedback.c.id, *(feedback.c[c] for c in columns))
                              .where(feedback.c.id > after).order_by(feedback.c.id)).all()
        return pd.DataFrame(rows, columns=["id", *columns])

    def bookmark(self, name: str) -> int:
        """A stored counter (0 where never set), e.g. how far an export has read."""
        with self.engine.connect() as db:
            row = db.execute(select(settings_table.c.value).where(
                settings_table.c.key == f"bookmark:{name}")).first()
        return int(row.value) if row else 0

    def set_bookmark(self, name: str, value: int) -> None:
        def write() -> None:
            with self.engine.begin() as db:
                key = f"bookmark:{name}"
                db.execute(delete(settings_table).where(settings_table.c.key == key))
                db.execute(insert(settings_table), [{"key": key, "value": str(value)}])

        settled(write)

    def held_of(self, customer_id: str) -> dict[str, list[dict[str, Any]]]:
        """What the store holds of one customer beside consents and the decision log: their
        posted events, feedback and the triggers' decisions about them, oldest first."""
        held = {}
        with self.engine.connect() as db:
            for name, table, order in (("events", events, events.c.seq),
                                       ("feedback", feedback, feedback.c.id),
                                       ("trigger_decisions", decisions, decisions.c.id)):
                rows = db.execute(select(table).where(table.c.customer_id == customer_id)
                                  .order_by(order)).mappings().all()
                held[name] = [dict(row) for row in rows]
        return held

    # --- console sessions ---------------------------------------------------------------

    def open_session(self, digest: str, csrf: str, key_digest: str, at: datetime,
                     expires_at: datetime) -> None:
        """Keep a console login (sessions expired by ``at`` are swept on the way)."""
        def write() -> None:
            with self.engine.begin() as db:
                db.execute(delete(console_sessions).where(console_sessions.c.expires_at <= at))
                db.execute(insert(console_sessions), [{
                    "digest": digest, "csrf": csrf, "key_digest": key_digest,
                    "created_at": at, "expires_at": expires_at}])

        settled(write)

    def console_session(self, digest: str, at: datetime) -> Row[Any] | None:
        """The unexpired console login of a cookie's digest, in any process."""
        with self.engine.connect() as db:
            return db.execute(select(console_sessions).where(
                (console_sessions.c.digest == digest)
                & (console_sessions.c.expires_at > at))).first()

    def close_session(self, digest: str) -> None:
        def write() -> None:
            with self.engine.begin() as db:
                db.execute(delete(console_sessions).where(console_sessions.c.digest == digest))

        settled(write)

    # --- erasure ------------------------------------------------------------------------

    def erase(self, customer_id: str, source: str, at: datetime,
              held_elsewhere: dict[str, int]) -> Erasure:
        """Delete the customer's consents, consent trail, feedback and events; keep a record
        of the erasure with counts only, and a keyed hash so the customer stays erased until
        they give consent again (then they are a new customer: what was held before stays
        forgotten)."""
        return settled(lambda: self._erase(customer_id, source, at, held_elsewhere))

    def _erase(self, customer_id: str, source: str, at: datetime,
               held_elsewhere: dict[str, int]) -> Erasure:
        with self.engine.begin() as db:
            removed = {
                "consents": db.execute(delete(consents).where(
                    consents.c.customer_id == customer_id)).rowcount,
                "consent_changes": db.execute(delete(consent_changes).where(
                    consent_changes.c.customer_id == customer_id)).rowcount,
                "feedback": db.execute(delete(feedback).where(
                    feedback.c.customer_id == customer_id)).rowcount,
                "events": db.execute(delete(events).where(
                    events.c.customer_id == customer_id)).rowcount,
                "trigger_decisions": db.execute(delete(decisions).where(
                    decisions.c.customer_id == customer_id)).rowcount,
                "decision_log": db.execute(delete(decision_log).where(
                    decision_log.c.token == self.token(customer_id))).rowcount,
                **held_elsewhere,
            }
            token = self.token(customer_id)
            if not db.execute(select(suppressed.c.token).where(suppressed.c.token == token)
                              ).first():
                db.execute(insert(suppressed), [{"token": token}])
            db.execute(delete(returned).where(returned.c.token == token))
            result = db.execute(insert(erasures), [{"erased_at": at, "source": source,
                                                    "removed": json.dumps(removed)}])
            erasure_id = int(result.inserted_primary_key[0]) if result.inserted_primary_key \
                else -1
        return Erasure(erasure_id, removed)

    def log_decisions(self, rows: list[dict[str, Any]]) -> int:
        """Store decision log rows (with ``customer_id``, which is kept as its token only)
        in one transaction, leaving out those of customers erased meanwhile; how many. On
        SQLite without an fsync, as budget counts: no answer waits on the log, and a process
        that is killed loses its last rows anyway (1,000 letters' rows committed in 28 ms
        where the fsync made it 42)."""
        tokens = {cid: self.token(cid) for cid in {r["customer_id"] for r in rows}
                  if cid}
        erased = self._erased_tokens(list(tokens.values()), returned_too=False)
        kept = [{**{k: v for k, v in row.items() if k not in ("customer_id", "offers")},
                 "token": token, "experiment": row.get("experiment"), "arm": row.get("arm"),
                 "offers": json.dumps(row["offers"])}
                for row in rows
                if (token := tokens.get(row["customer_id"])) not in erased]
        if kept:
            settled(lambda: self._write_decisions(kept))
        return len(kept)

    def _write_decisions(self, rows: list[dict[str, Any]]) -> None:
        with self.counts.begin() as db:
            db.execute(insert(decision_log), rows)

    def sweep_decisions(self, before: datetime) -> int:
        """Delete decision log rows older than ``before`` and those of erased customers (who
        have not given consent again); how many."""
        erased = select(suppressed.c.token).outerjoin(
            returned, returned.c.token == suppressed.c.token).where(returned.c.token.is_(None))
        with self.engine.begin() as db:
            return int(db.execute(delete(decision_log).where(
                (decision_log.c.decided_at < before) | decision_log.c.token.in_(erased)))
                .rowcount)

    def decisions_of(self, customer_id: str) -> list[dict[str, Any]]:
        """The decision log's rows of one customer, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(decision_log).where(
                decision_log.c.token == self.token(customer_id)).order_by(decision_log.c.id))
            return [{**row._asdict(), "offers": json.loads(row.offers)} for row in rows]

    def erased_tokens(self) -> set[str]:
        with self.engine.connect() as db:
            return {row.token for row in db.execute(select(suppressed.c.token))}

    def is_erased(self, customer_id: str) -> bool:
        """Whether the customer was erased, in any process: one primary-key read."""
        with self._reader() as db:
            return bool(self._erased.rows(db, {"token": self.token(customer_id)}))

    def erased_among(self, customer_ids: Iterable[str], returned_too: bool = True) -> set[str]:
        """The erased customers among ``customer_ids``. A customer who gave consent again
        after their erasure is a new customer: what was held of them before stays forgotten
        (``returned_too``, the default, counts them), but they get mail and their new
        events and feedback are kept (``returned_too=False`` leaves them out)."""
        tokens = {self.token(cid): cid for cid in dict.fromkeys(customer_ids)}
        return {tokens[t] for t in self._erased_tokens(list(tokens), returned_too)}

    def _erased_tokens(self, tokens: list[str], returned_too: bool) -> set[str]:
        """:meth:`erased_among` of customers' tokens."""
        found: set[str] = set()
        query = select(suppressed.c.token)
        if not returned_too:
            query = query.outerjoin(returned, returned.c.token == suppressed.c.token).where(
                returned.c.token.is_(None))
        with self.engine.connect() as db:
            for start in range(0, len(tokens), IDS_AT_ONCE):
                found.update(r.token for r in db.execute(query.where(
                    suppressed.c.token.in_(tokens[start:start + IDS_AT_ONCE]))))
        return found

    def erasure_count(self) -> int:
        """How many erasures were recorded: a worker that saw fewer forgets again."""
        with self.engine.connect() as db:
            return int(db.execute(select(func.count()).select_from(erasures)).scalar_one())

    def erasure_log(self) -> pd.DataFrame:
        with self.engine.connect() as db:
            return pd.DataFrame(db.execute(select(erasures).order_by(erasures.c.id))
                                .mappings().all())

    def token(self, customer_id: str) -> str:
        return hmac.new(self._key, str(customer_id).encode(), hashlib.sha256).hexdigest()

    def tokens(self, customer_ids: np.ndarray) -> np.ndarray:
        return np.asarray([self.token(cid) for cid in customer_ids], dtype=object)

    def put_policy(self, version: str, text: str, source: str, at: datetime) -> int:
        """Make an offer policy the one in use; its id (the newest id is in use)."""
        with self.engine.begin() as db:
            return int(db.execute(insert(policies).values(
                version=version, text=text, source=source, created_at=at)
                .returning(policies.c.id)).scalar_one())

    def current_policy(self) -> StoredPolicy | None:
        """The offer policy in use, None where none was ever put."""
        with self.engine.connect() as db:
            row = db.execute(select(policies).order_by(policies.c.id.desc()).limit(1)).first()
        return None if row is None else StoredPolicy(row.id, row.version, row.text, row.source,
                                                     row.created_at)

    # --- budgets ----------------------------------------------------------------------

    def budget_used(self, keys: list[tuple[str, str]], own_reserve_free: bool = False
                    ) -> dict[tuple[str, str], int]:
        """What each (budget, period) has used so far (absent: nothing): impressions served
        and those processes hold in reserve. ``own_reserve_free``: less what this process
        holds, which it may still serve."""
        if not keys:
            return {}
        names = sorted({name for name, _ in keys})
        with self.engine.connect() as db:
            rows = db.execute(select(budget_counts).where(budget_counts.c.budget.in_(names)))
            found = {(row.budget, row.period): int(row.used) for row in rows}
        with self._reserve_lock:
            held = dict(self._reserved) if own_reserve_free else {}
        return {key: found.get(key, 0) - held.get(key, 0) for key in keys}

    def spend(self, wanted: list[list[tuple[str, str, int]]]) -> list[bool]:
        """Per offer, take one impression from each of its budgets, given as (budget,
        period, limit): all of them or none (an offer whose budget is used up gets False).

        Impressions come from what this process holds in reserve. Where it holds too few,
        it takes a block from the store's counts in one transaction: ``RESERVE_BLOCK``, or
        a sixteenth of what is left where that is less, and at least what the answer needs.
        Each count moves only while it stays within its limit, so no number of workers or
        replicas spends past a limit, and most answers write nothing."""
        if not any(wanted):
            return [True] * len(wanted)
        with self._reserve_lock:
            needed = Counter(key for offer in wanted for key in {(n, p) for n, p, _ in offer})
            limits = {(name, period): limit for offer in wanted for name, period, limit in offer}
            short = {key: (limits[key], count - self._reserved[key])
                     for key, count in needed.items() if count > self._reserved[key]}
            if short:
                self._reserved.update(settled(lambda: self._reserve(short)))
            taken = []
            for offer in wanted:
                keys = [(name, period) for name, period, _ in offer]
                ok = all(self._reserved[key] >= 1 for key in keys)
                if ok:
                    self._reserved.subtract(keys)
                taken.append(ok)
            return taken

    def give_back(self) -> None:
        """Return the impressions this process holds in reserve to their budgets: at a
        change of the offer policy (a limit may have changed) and when the process stops."""
        with self._reserve_lock:
            held = {key: n for key, n in self._reserved.items() if n > 0}
            self._reserved.clear()
        if held:
            settled(lambda: self._give_back(held))

    def _reserve(self, short: dict[tuple[str, str], tuple[int, int]]
                 ) -> dict[tuple[str, str], int]:
        with self.counts.begin() as db:
            return {key: self._block(db, *key, limit, need)
                    for key, (limit, need) in short.items()}

    def _block(self, db: Any, name: str, period: str, limit: int, need: int) -> int:
        """Take a block from one budget's count; how many it took (0: used up)."""
        column = budget_counts.c
        row = (column.budget == name) & (column.period == period)
        for _ in range(3):  # another process may move the count between the read and here
            used = db.execute(select(column.used).where(row)).scalar_one_or_none()
            left = limit - (used or 0)
            if left <= 0:
                return 0
            block = min(left, max(need, min(RESERVE_BLOCK, left // 16)))
            if used is None:
                if db.execute(self._insert(budget_counts).values(
                        budget=name, period=period, used=block).on_conflict_do_nothing()
                        .returning(column.used)).all():
                    return block
            elif db.execute(update(budget_counts).where(row & (column.used + block <= limit))
                            .values(used=column.used + block)).rowcount:
                return block
        return 0

    def _give_back(self, held: dict[tuple[str, str], int]) -> None:
        column = budget_counts.c
        with self.counts.begin() as db:
            for (name, period), n in held.items():
                db.execute(update(budget_counts).where(
                    (column.budget == name) & (column.period == period))
                    .values(used=case((column.used > n, column.used - n), else_=0)))

    def _count(self, db: Any, keys: list[tuple[str, str]]) -> None:
        """Count one per key (conversions: they happen whatever the limit says)."""
        if not keys:
            return
        column = budget_counts.c
        db.execute(self._insert(budget_counts).values(
            [{"budget": name, "period": period, "used": 0} for name, period in set(keys)])
            .on_conflict_do_nothing())
        for name, period in keys:
            db.execute(update(budget_counts).where(
                (column.budget == name) & (column.period == period))
                .values(used=column.used + 1))

    # --- triggers -----------------------------------------------------------------------

    def claim_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold ``name`` for ``seconds`` of wall-clock time unless another holder's lease
        is still running; True where ``holder`` holds it now."""
        return settled(lambda: self._claim(name, holder, seconds))

    def _claim(self, name: str, holder: str, seconds: float) -> bool:
        now = datetime.now(UTC).replace(tzinfo=None)
        until = now + pd.Timedelta(seconds=seconds).to_pytimedelta()
        with self.engine.begin() as db:
            db.execute(self._insert(leases).values(name=name, holder=holder, expires_at=now)
                       .on_conflict_do_nothing())
            moved = db.execute(update(leases).where(
                (leases.c.name == name)
                & ((leases.c.holder == holder) | (leases.c.expires_at <= now)))
                .values(holder=holder, expires_at=until)).rowcount
        return bool(moved)

    def release_lease(self, name: str, holder: str) -> None:
        with self.engine.begin() as db:
            db.execute(update(leases).where((leases.c.name == name) & (leases.c.holder == holder))
                       .values(expires_at=datetime(1970, 1, 1)))

    def events_after(self, after: int, limit: int) -> list[Row[Any]]:
        """Up to ``limit`` stored events after sequence number ``after``, in their order,
        with their ``seq``."""
        with self.engine.connect() as db:
            return list(db.execute(select(events).where(events.c.seq > after)
                                   .order_by(events.c.seq).limit(limit)))

    def views_between(self, customer_ids: Iterable[str], start: datetime, end: datetime
                      ) -> list[Row[Any]]:
        """The customers' view events from ``start`` to ``end``."""
        return self._rows_for(VIEW_ROWS, customer_ids, start=start, end=end)

    def purchases_between(self, customer_ids: Iterable[str], start: datetime, end: datetime
                          ) -> list[Row[Any]]:
        """The customers' purchases (purchase events and conversion feedback) from
        ``start`` to ``end``: customer, product and moment."""
        return self._rows_for(PURCHASE_ROWS, customer_ids, start=start, end=end)

    def purchase_bounds(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Per customer, the first and last purchase (events and conversions) from
        ``start`` to ``end``."""
        union = PURCHASES.subquery()
        with self.engine.connect() as db:
            rows = db.execute(select(union.c.customer_id, func.min(union.c.timestamp),
                                     func.max(union.c.timestamp)).group_by(union.c.customer_id),
                              {"start": start, "end": end}).all()
        return pd.DataFrame(rows, columns=["customer_id", "first", "last"])

    def add_occasions(self, rows: list[dict[str, Any]]) -> int:
        """New pending occasions of triggers; one already held (same trigger and occasion)
        is not added again. How many were new."""
        if not rows:
            return 0

        def add() -> int:
            with self.engine.begin() as db:
                return sum(len(db.execute(self._insert(decisions).values(status=PENDING, **row)
                                          .on_conflict_do_nothing()
                                          .returning(decisions.c.id)).all()) for row in rows)

        return settled(add)

    def recent_occasions(self, trigger: str, customer_ids: Iterable[str], since: datetime
                         ) -> set[str]:
        """The customers among ``customer_ids`` with an occasion of ``trigger`` since
        ``since``."""
        return {row.customer_id for row in self._rows_for(
            RECENT_OCCASIONS, customer_ids, trigger=trigger, since=since)}

    def pending_occasions(self, trigger: str, customer_ids: Iterable[str]) -> dict[str, Row[Any]]:
        """The pending occasion of ``trigger`` of each customer among ``customer_ids`` that
        has one (the newest where several are)."""
        rows = self._rows_for(PENDING_OCCASIONS, customer_ids, trigger=trigger)
        return {row.customer_id: row for row in sorted(rows, key=lambda r: r.id)}

    def extend_occasions(self, changes: list[dict[str, Any]]) -> None:
        """Give pending occasions (by ``id``) a new subject, newest event and due moment: a
        cart that grew before it was due."""
        if changes:
            settled(lambda: self._update_pending(changes))

    def _update_pending(self, changes: list[dict[str, Any]]) -> None:
        with self.engine.begin() as db:
            for change in changes:
                db.execute(update(decisions).where(
                    (decisions.c.id == change["id"]) & (decisions.c.status == PENDING))
                    .values(**{k: v for k, v in change.items() if k != "id"}))

    def due(self, now: datetime, limit: int) -> list[Row[Any]]:
        """Pending occasions due at ``now``, the earliest first."""
        with self.engine.connect() as db:
            return list(db.execute(select(decisions).where(
                (decisions.c.status == PENDING) & (decisions.c.due_at <= now))
                .order_by(decisions.c.due_at, decisions.c.id).limit(limit)))

    def messages_sent(self, customer_ids: Iterable[str], since: datetime) -> dict[str, int]:
        """Triggered messages handed over per customer since ``since``, all channels."""
        return {row.customer_id: int(row.sent) for row in self._rows_for(
            SENT_COUNTS, customer_ids, since=since)}

    def settle(self, outcomes: list[dict[str, Any]]) -> int:
        """Write what became of due occasions in one transaction: each ``id`` either waits
        (a later ``due_at``) or is sent or dropped, which gives it the feed's next cursor.
        Only the holder of the triggers' lease settles, so cursors are handed out in
        order. The last cursor given."""
        return settled(lambda: self._settle(outcomes))

    def _settle(self, outcomes: list[dict[str, Any]]) -> int:
        with self.engine.begin() as db:
            cursor = int(db.execute(select(func.coalesce(func.max(decisions.c.cursor), 0))
                                    ).scalar_one())
            for outcome in outcomes:
                values = {k: v for k, v in outcome.items() if k != "id"}
                pending = decisions.c.status == PENDING
                if values.get("status", PENDING) != PENDING:
                    values["cursor"] = cursor + 1
                moved = db.execute(update(decisions).where(
                    (decisions.c.id == outcome["id"]) & pending).values(**values)).rowcount
                if moved and "cursor" in values:
                    cursor += 1
        return cursor

    def feed(self, after: int, limit: int, dropped: bool = False) -> list[Row[Any]]:
        """Decisions after ``after`` in the feed's order: sent ones, and dropped ones too
        with ``dropped``."""
        statuses = (SENT, DROPPED) if dropped else (SENT,)
        with self.engine.connect() as db:
            return list(db.execute(select(decisions).where(
                (decisions.c.cursor > after) & decisions.c.status.in_(statuses))
                .order_by(decisions.c.cursor).limit(limit)))

    def last_cursor(self) -> int:
        with self.engine.connect() as db:
            return int(db.execute(select(func.coalesce(func.max(decisions.c.cursor), 0))
                                  ).scalar_one())

    def bind_dataset(self, dataset: str) -> str:
        """The dataset this store serves: ``dataset`` if it serves none yet (recorded), else
        the one it was first served with."""
        return settled(lambda: self._bind(dataset))

    def _bind(self, dataset: str) -> str:
        with self.engine.begin() as db:
            db.execute(self._insert(settings_table).values(key=DATASET_KEY, value=dataset)
                       .on_conflict_do_nothing())
            return str(db.execute(select(settings_table.c.value).where(
                settings_table.c.key == DATASET_KEY)).scalar_one())

    def _drop_old_indexes(self) -> None:
        with self.engine.begin() as db:
            held = {index["name"] for index in inspect(db).get_indexes("feedback")}
            if FEEDBACK_ONCE_BEFORE in held:
                db.exec_driver_sql(f"DROP INDEX {FEEDBACK_ONCE_BEFORE}")

    def _add_columns(self) -> None:
        with self.engine.begin() as db:
            for table, columns in ADDED_COLUMNS.items():
                held = {column["name"] for column in inspect(db).get_columns(table)}
                for column in columns:
                    if column.name not in held:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        db.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}")

    # --- experiments --------------------------------------------------------------------

    def add_experiment(self, experiment: Experiment) -> None:
        """Store a new experiment (a draft); an existing name is refused."""
        created = experiment.created_at or datetime.now(UTC).replace(tzinfo=None)
        try:
            with self.engine.begin() as db:
                db.execute(insert(experiments), [{
                    "name": experiment.name, "spec": experiment.spec(), "status": "draft",
                    "running": None, "created_at": created}])
        except IntegrityError:
            if any(held.name == experiment.name for held in self.experiments()):
                raise ExperimentError(f"an experiment {experiment.name!r} exists already"
                                      ) from None
            raise

    def experiments(self) -> list[Experiment]:
        """Every experiment, the newest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(experiments).order_by(experiments.c.created_at.desc(),
                                                           experiments.c.name))
            return [Experiment.from_row(row) for row in rows]

    def experiment(self, name: str) -> Experiment:
        with self.engine.connect() as db:
            row = db.execute(select(experiments).where(experiments.c.name == name)).first()
        if row is None:
            raise ExperimentError(f"no experiment {name!r}; 'nbo experiment list' shows them")
        return Experiment.from_row(row)

    def running_experiment(self) -> Experiment | None:
        with self.engine.connect() as db:
            row = db.execute(select(experiments).where(experiments.c.running == 1)).first()
        return None if row is None else Experiment.from_row(row)

    def move_experiment(self, name: str, status: Status, at: datetime) -> Experiment:
        """Start (``running``) or stop (``stopped``) an experiment; a second running one is
        refused (:class:`ExperimentError`)."""
        moved = self.experiment(name).moved(status, at)
        try:
            with self.engine.begin() as db:
                changed = db.execute(update(experiments).where(
                    (experiments.c.name == name) & (experiments.c.status != status)).values(
                    status=status, running=1 if status == "running" else None,
                    started_at=moved.started_at, stopped_at=moved.stopped_at)).rowcount
        except IntegrityError:
            running = self.running_experiment()
            raise ExperimentError(f"experiment {running.name if running else '?'!r} is "
                                  "running; stop it first: one experiment runs at a time"
                                  ) from None
        if not changed:
            raise ExperimentError(f"experiment {name!r} was moved meanwhile; look again")
        return moved

    def response_counts(self, since: datetime, product_ids: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Impressions and clicks per offer of ``product_ids`` in the feedback log since
        ``since``: what exploration's posteriors count."""
        with self.engine.connect() as db:
            rows = db.execute(select(
                feedback.c.product_id,
                func.sum(case((feedback.c.action == "impression", 1), else_=0)),
                func.sum(case((feedback.c.action == "click", 1), else_=0)))
                .where(feedback.c.timestamp >= since).group_by(feedback.c.product_id)).all()
        counts = pd.DataFrame(rows, columns=["product", "impressions", "clicks"]).set_index(
            "product").reindex(product_ids).fillna(0)
        return (counts["impressions"].to_numpy(np.int64), counts["clicks"].to_numpy(np.int64))

    def offer_responses(self, since: datetime) -> pd.DataFrame:
        """Per offer (the index), how many of each feedback action the log holds since
        ``since``: impression, click, conversion and dismiss columns."""
        with self.engine.connect() as db:
            rows = db.execute(select(feedback.c.product_id, feedback.c.action, func.count())
                              .where(feedback.c.timestamp >= since)
                              .group_by(feedback.c.product_id, feedback.c.action)).all()
        frame = pd.DataFrame(rows, columns=["product", "action", "count"])
        return (frame.pivot_table(index="product", columns="action", values="count",
                                  aggfunc="sum", fill_value=0)
                .reindex(columns=list(FEEDBACK_ACTIONS), fill_value=0).astype(np.int64))

    def decisions_frame(self, experiment: str | None, start: datetime | None = None,
                        end: datetime | None = None, every: bool = False) -> pd.DataFrame:
        """The decision log's rows of an experiment (None: of every experiment, the
        universal control group's included; ``every``: every row, in an experiment or not),
        ``start`` to ``end`` where given, one row per offer shown: token, request id,
        channel, endpoint, experiment, arm, stage, moment, model version, product, position,
        the probability it was in the list and whether exploration put it there."""
        column = decision_log.c.experiment
        statement = select(decision_log)
        if not every:
            statement = statement.where(
                column.is_not(None) if experiment is None else column == experiment)
        if start is not None:
            statement = statement.where(decision_log.c.decided_at >= start)
        if end is not None:
            statement = statement.where(decision_log.c.decided_at <= end)
        with self.engine.connect() as db:
            rows = db.execute(statement.order_by(decision_log.c.id)).all()
        shown = [(row.token, row.request_id, row.channel, row.endpoint, row.experiment,
                  row.arm, row.stage, _naive(row.decided_at), row.model_version,
                  offer["product_id"], offer["position"], offer.get("probability", 1.0),
                  bool(offer.get("explored", False)))
                 for row in rows for offer in json.loads(row.offers)]
        return pd.DataFrame(shown, columns=[
            "token", "request_id", "channel", "endpoint", "experiment", "arm", "stage",
            "decided_at", "model_version", C.product, "position", "probability", "explored"])

    def _check_key(self) -> None:
        """Record the key's check value, or refuse a key other than the recorded one. A
        key kept in the database by an earlier version is removed once the same key is
        given by the setting ('nbo store key' prints it)."""
        check = hmac.new(self._key, b"nbo erasure key check", hashlib.sha256).hexdigest()
        with self.engine.begin() as db:
            held = dict(db.execute(select(settings_table.c.key, settings_table.c.value).where(
                settings_table.c.key.in_([LEGACY_KEY, KEY_CHECK]))).all())
            legacy = held.get(LEGACY_KEY)
            if legacy is not None and bytes.fromhex(legacy) != self._key:
                raise ValueError("this store holds its erasure key in the database (made by "
                                 "an earlier nbo): 'nbo store key' prints it; set it as "
                                 "NBO_ERASURE_KEY and the store removes its copy")
            if held.get(KEY_CHECK, check) != check:
                raise ValueError("NBO_ERASURE_KEY is not the key this store's erasures were "
                                 "recorded with; with it erased customers would come back")
            if legacy is not None:
                db.execute(delete(settings_table).where(settings_table.c.key == LEGACY_KEY))
            if KEY_CHECK not in held:
                db.execute(insert(settings_table), [{"key": KEY_CHECK, "value": check}])


class NoErasureKey(ValueError):
    """The store is opened without NBO_ERASURE_KEY."""


def open_store(settings: Any, local: bool = False) -> Store:
    """The store of ``settings`` with its erasure key: ``NBO_ERASURE_KEY``, required unless
    ``local`` (the demo, the notebooks), which falls back to NBO_HOME/erasure.key."""
    key = settings.local_erasure_key() if local else settings.erasure_key
    if not key:
        raise NoErasureKey("set NBO_ERASURE_KEY (at least 16 characters, kept out of the "
                           "database; 'nbo store key' makes one) to open the store")
    return Store(settings.consent_url(), key)


def key_bytes(erasure_key: str) -> bytes:
    """A 64-digit hex key as its 32 bytes, any other text as its UTF-8 bytes."""
    if len(erasure_key) == 64 and all(c in string.hexdigits for c in erasure_key):
        return bytes.fromhex(erasure_key)
    return erasure_key.encode()


def legacy_key(url: str) -> str | None:
    """The erasure key an earlier version kept in the store's database, if it is there (a
    SQLite store not made yet has none)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    engine = create_engine(url, future=True)
    try:
        with engine.connect() as db:
            if not inspect(db).has_table(settings_table.name):
                return None
            return db.execute(select(settings_table.c.value).where(
                settings_table.c.key == LEGACY_KEY)).scalar_one_or_none()
    finally:
        engine.dispose()


def settled(work: Callable[[], T], attempts: int = 6) -> T:
    """Run ``work`` (one transaction) again when it lost a race with another process on the
    same database: a key or table another writer created first, or SQLite's write lock. The
    rerun sees what the other committed; any other error is raised at once."""
    for attempt in range(attempts):
        try:
            return work()
        except (IntegrityError, OperationalError, ProgrammingError) as error:
            text = str(error.orig).lower()
            lost = isinstance(error, IntegrityError) or "already exists" in text \
                or "database is locked" in text
            if not lost or attempt == attempts - 1:
                raise
            time.sleep(0.02 * 2**attempt)
    raise AssertionError("unreachable")


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _ns(value: datetime | str | None) -> int:
    if value is None:
        return int(NO_TIME)
    return int(pd.Timestamp(value).as_unit("ns").value)


def _effective(held: dict[str, tuple[bool, bool]], personalization_default: bool) -> Consent:
    def granted(purpose: str) -> bool:
        return purpose in held and held[purpose][0]

    channels = {ch for ch in MESSAGING_CHANNELS if granted(ch)}
    if "email" in channels and not held["email"][1]:
        channels.discard("email")  # e-mail needs double opt-in
    personalization = held["personalization"][0] if "personalization" in held \
        else personalization_default
    return Consent(personalization, frozenset(channels), granted("sensitive"))


def _sqlite_count_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable past a crash of the process
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't wait for the writer
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives a crash
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
