"""Timely triggers: moments to contact a customer, found in the live events (a cart left, a
streak of views of one category, a first purchase) and in time (a customer crossing into
at risk or lapsed), each turned into a decision for a messaging channel: whether to contact
the customer now, and with which offers.

A pass (:meth:`Triggers.run`) works at a moment ``now`` that the caller gives (the wall
clock, ``NBO_NOW``, or a test's clock):

1. it finds the occasions in the events stored since the last pass and the stage crossings
   between the last pass's moment and ``now``, and stores each as pending, due after its
   trigger's delay;
2. it settles the occasions due at ``now``. One that is no longer right is dropped with its
   reason (the cart was bought meanwhile, the customer was erased or withdrew the channel's
   consent, the message cap is reached, it waited past its expiry, no offer passes the
   rules); one due in the customer's quiet hours waits for their end; the rest are sent,
   their offers chosen by the engine on the trigger's channel through every rule and the
   offer policy.

Sent and dropped decisions take the feed's next cursor (``GET /triggers?since=CURSOR``)
and, where a webhook is set, are posted to it, signed. One process at a time runs a pass (a
lease in the store), so every worker and replica may call it on its own timer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pandas as pd

from features.state import stage_from_days
from serving.assignment import CONTROL
from serving.decision_log import DecisionLog, ranking_row
from serving.engine import Engine, Request
from serving.metrics import METRICS
from serving.offer_policy import Contact, OfferPolicy, Trigger
from serving.state import NO_TIME, NS_PER_DAY, moment_ns
from serving.store import DROPPED, NO_EXPOSURE, SENT, Store

LEASE = "triggers"
LEASE_SECONDS = 300.0  # a pass that dies leaves the lease to others after this
EVENTS_BOOKMARK, MOMENT_BOOKMARK = "triggers:events", "triggers:moment"
WEBHOOK_BOOKMARK = "triggers:webhook"
EVENTS_PER_PASS = 10_000
DUE_PER_PASS = 1_000
WEBHOOK_BATCH = 100
SIGNATURE_HEADER = "X-Nbo-Signature"
MIN_SECRET_LENGTH = 16
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pass:
    """What one pass did; ``ran`` is False where another process held the lease."""

    ran: bool
    found: int = 0
    sent: int = 0
    dropped: int = 0
    waiting: int = 0
    delivered: int = 0  # decisions the webhook took


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str
    timeout_seconds: float = 10.0


def signature(secret: str, stamp: int, body: bytes) -> str:
    """The webhook's signature header: ``t=STAMP,v1=HMAC-SHA256(secret, "STAMP." + body)``
    in hex; the receiver recomputes it and rejects old stamps (replays)."""
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


class Triggers:
    """Finds and settles the offer policy's triggers against one store."""

    def __init__(self, store: Store, webhook: Webhook | None = None,
                 log: DecisionLog | None = None) -> None:
        self.store, self.webhook, self.log = store, webhook, log
        self.holder = uuid.uuid4().hex

    def run(self, engine: Engine, now: datetime) -> Pass:
        """One pass at ``now`` (naive UTC) with the engine's offer policy."""
        if not self.store.claim_lease(LEASE, self.holder, LEASE_SECONDS):
            return Pass(ran=False)
        try:
            policy = engine.arbiter.versioned.policy
            found = self.find(engine, policy, now)
            sent, dropped, waiting = self.settle(engine, policy, now)
            delivered = self.deliver() if self.webhook else 0
        finally:
            self.store.release_lease(LEASE, self.holder)
        METRICS.triggers.labels(status=SENT).inc(sent)
        METRICS.triggers.labels(status=DROPPED).inc(dropped)
        return Pass(True, found, sent, dropped, waiting, delivered)

    def every(self, seconds: float, engine: Callable[[], Engine | None],
              clock: Callable[[], datetime], stop: threading.Event) -> None:
        """Run a pass every ``seconds`` in a daemon thread until ``stop``, with the engine
        serving then (none: skipped) at the clock's moment."""
        if seconds <= 0:
            return

        def loop() -> None:
            while not stop.wait(seconds):
                serving = engine()
                if serving is None:
                    continue
                try:
                    done = self.run(serving, clock())
                except Exception:  # the timer must outlive a broken store or pass; logged
                    log.exception("a pass of the triggers failed; tried again in %gs", seconds)
                    continue
                if done.ran and (done.found or done.sent or done.dropped):
                    log.info("triggers: %s", asdict(done))

        threading.Thread(target=loop, name="nbo-triggers", daemon=True).start()

    # --- finding occasions --------------------------------------------------------------

    def find(self, engine: Engine, policy: OfferPolicy, now: datetime) -> int:
        """Store the occasions of the events since the last pass and of the stage crossings
        since its moment; how many were new."""
        store = self.store
        after = store.bookmark(EVENTS_BOOKMARK)
        rows = store.events_after(after, EVENTS_PER_PASS)
        events = pd.DataFrame(rows, columns=list(rows[0]._fields)) if rows else None
        previous = store.bookmark(MOMENT_BOOKMARK)
        occasions: list[dict[str, Any]] = []
        for trigger in policy.triggers:
            if trigger.when in ("stage", "birthday"):  # in time: since the last pass
                if not 0 < previous < moment_ns(now):
                    continue
                found = (crossings(engine, store, trigger, previous, now)
                         if trigger.when == "stage"
                         else birthdays(engine, trigger, policy.contact, previous, now))
            elif events is None:
                continue
            elif trigger.when == "cart_abandoned":
                found = self._grow_pending_carts(trigger, abandoned_carts(trigger, events))
            elif trigger.when == "first_purchase":
                found = first_purchases(engine, store, trigger, events)
            else:
                found = category_streaks(engine, store, trigger, events)
            occasions += self._not_too_often(trigger, found, now)
        new = store.add_occasions(occasions)
        if rows:
            store.set_bookmark(EVENTS_BOOKMARK, int(rows[-1].seq))
        if moment_ns(now) > previous:
            store.set_bookmark(MOMENT_BOOKMARK, moment_ns(now))
        return new

    def _grow_pending_carts(self, trigger: Trigger, carts: list[dict[str, Any]]
                            ) -> list[dict[str, Any]]:
        """Add the carts of customers whose cart is still pending to it (its products, and
        due ``after_minutes`` after the newest addition); the carts of the others."""
        pending = self.store.pending_occasions(trigger.name, (c["customer_id"] for c in carts))
        changes, new = [], []
        for cart in carts:
            held = pending.get(cart["customer_id"])
            if held is None:
                new.append(cart)
                continue
            latest = max(_naive(held.latest), cart["latest"])
            products = list(dict.fromkeys(json.loads(held.subject) + json.loads(cart["subject"])))
            changes.append({"id": held.id, "subject": json.dumps(products), "latest": latest,
                            "due_at": latest + timedelta(minutes=trigger.after_minutes)})
        self.store.extend_occasions(changes)
        return new

    def _not_too_often(self, trigger: Trigger, found: list[dict[str, Any]], now: datetime
                       ) -> list[dict[str, Any]]:
        """With ``once_per_days``: one occasion per customer in this pass and none for a
        customer who had one within that time."""
        if trigger.once_per_days is None or not found:
            return found
        recent = self.store.recent_occasions(
            trigger.name, (o["customer_id"] for o in found),
            now - timedelta(days=trigger.once_per_days))
        kept = []
        for occasion in sorted(found, key=lambda o: o["since"]):
            if occasion["customer_id"] not in recent:
                recent.add(occasion["customer_id"])
                kept.append(occasion)
        return kept

    # --- settling what is due -----------------------------------------------------------

    def settle(self, engine: Engine, policy: OfferPolicy, now: datetime
               ) -> tuple[int, int, int]:
        """Send, drop or postpone the occasions due at ``now``; (sent, dropped, waiting)."""
        store = self.store
        due = store.due(now, DUE_PER_PASS)
        if not due:
            return 0, 0, 0
        triggers = {t.name: t for t in policy.triggers}
        customers = [row.customer_id for row in due]
        consents = store.consents_of(customers, engine.settings.personalization_default)
        erased = store.erased_among(customers, returned_too=False)
        contact, control = policy.contact, engine.settings.control
        sent_before = (store.messages_sent(customers, now - timedelta(days=contact.per_days))
                       if contact.max_messages else {})
        bought = bought_since(store, [row for row in due if row.trigger in triggers
                                      and triggers[row.trigger].when == "cart_abandoned"], now)
        outcomes: list[dict[str, Any]] = []
        counts = {SENT: 0, DROPPED: 0, "waiting": 0}
        for row in due:
            trigger = triggers.get(row.trigger)
            consent = consents[row.customer_id]
            why = None
            if trigger is None:
                why = "the trigger is no longer in the offer policy"
            elif row.customer_id in erased:
                why = "the customer was erased"
            elif trigger.expire_minutes is not None and now > _naive(row.latest) + timedelta(
                    minutes=trigger.after_minutes + trigger.expire_minutes):
                why = "expired before it could be sent"
            elif row.id in bought and not bought[row.id]:
                why = "bought meanwhile"
            elif not consent.allows_channel(row.channel):
                why = ("no e-mail consent with double opt-in" if row.channel == "email"
                       else f"no {row.channel} consent")
            elif trigger.when == "stage" and stage_now(engine, row.customer_id, now) \
                    != trigger.stage:
                why = f"no longer {trigger.stage}"
            elif trigger.when == "birthday" and not consent.personalization:
                why = "no personalisation consent"
            elif control.arm(row.customer_id, now) == CONTROL:
                if control.mail == "holdout":
                    why = "control group"
                else:
                    consent = replace(consent, personalization=False)
            if why is None:
                assert trigger is not None
                waits_until = quiet_until(contact, engine, row.customer_id, now)
                if waits_until is not None:
                    outcomes.append({"id": row.id, "due_at": waits_until})
                    counts["waiting"] += 1
                    continue
                if contact.max_messages and \
                        sent_before.get(row.customer_id, 0) >= contact.max_messages:
                    why = (f"message cap: {contact.max_messages} in {contact.per_days:g} "
                           "days reached")
            if why is None:
                assert trigger is not None
                ranking = engine.rank(Request(row.customer_id, row.channel, trigger.k,
                                              among=tuple(trigger.offers)), now, consent)
                if ranking.offers:
                    left = {"subject": json.dumps(bought[row.id])} if row.id in bought else {}
                    outcomes.append({
                        "id": row.id, "status": SENT, "decided_at": now, **left,
                        "offers": json.dumps([{"product_id": o.product_id, "title": o.title,
                                               "rank": o.rank, "reason": o.reason}
                                              for o in ranking.offers]),
                        "model_version": ranking.model_version,
                        "policy_version": ranking.policy_version})
                    sent_before[row.customer_id] = sent_before.get(row.customer_id, 0) + 1
                    if self.log is not None:
                        self.log.record([ranking_row(ranking, row.channel, "trigger", now)])
                    counts[SENT] += 1
                    continue
                why = f"no offer passes the rules ({ranking.withheld or 'none left'})"
            outcomes.append({"id": row.id, "status": DROPPED, "reason": why,
                             "decided_at": now})
            counts[DROPPED] += 1
        store.settle(outcomes)
        return counts[SENT], counts[DROPPED], counts["waiting"]

    # --- the webhook --------------------------------------------------------------------

    def deliver(self) -> int:
        """Post the sent decisions the webhook has not taken, in batches, signed; the
        bookmark moves only past a batch answered with 2xx, so a failed post is repeated
        on the next pass (at least once). How many it took."""
        assert self.webhook is not None
        hook, taken = self.webhook, 0
        while True:
            after = self.store.bookmark(WEBHOOK_BOOKMARK)
            rows = self.store.feed(after, WEBHOOK_BATCH)
            if not rows:
                return taken
            body = json.dumps({"decisions": [decision(row) for row in rows],
                               "cursor": int(rows[-1].cursor)}).encode()
            headers = {"content-type": "application/json",
                       SIGNATURE_HEADER: signature(hook.secret, int(time.time()), body)}
            try:
                answer = httpx.post(hook.url, content=body, headers=headers,
                                    timeout=hook.timeout_seconds)
            except httpx.HTTPError as failed:
                log.warning("trigger webhook not reached (%s); retried on the next pass",
                            type(failed).__name__)
                return taken
            if not answer.is_success:
                log.warning("trigger webhook answered %d; retried on the next pass",
                            answer.status_code)
                return taken
            self.store.set_bookmark(WEBHOOK_BOOKMARK, int(rows[-1].cursor))
            taken += len(rows)


def decision(row: Any) -> dict[str, Any]:
    """A feed row as the feed and the webhook give it."""
    return {"cursor": int(row.cursor), "decision_id": int(row.id), "trigger": row.trigger,
            "customer_id": row.customer_id, "channel": row.channel, "status": row.status,
            "reason": row.reason, "subject": json.loads(row.subject),
            "since": _naive(row.since).isoformat(), "due_at": _naive(row.due_at).isoformat(),
            "decided_at": _naive(row.decided_at).isoformat() if row.decided_at else None,
            "offers": json.loads(row.offers) if row.offers else [],
            "model_version": row.model_version, "policy_version": row.policy_version}


# --- occasions, per kind of trigger ----------------------------------------------------

def occasion(trigger: Trigger, customer_id: str, key: str, subject: list[str],
             since: datetime, latest: datetime | None = None) -> dict[str, Any]:
    """A pending occasion of ``customer_id``, once per trigger and ``key``, due
    ``after_minutes`` after its ``latest`` event (``since`` by default)."""
    latest = since if latest is None else latest
    return {"trigger": trigger.name, "occasion": key[:400], "customer_id": customer_id,
            "channel": trigger.channel, "subject": json.dumps(subject), "since": since,
            "latest": latest, "due_at": latest + timedelta(minutes=trigger.after_minutes)}


def abandoned_carts(trigger: Trigger, events: pd.DataFrame) -> list[dict[str, Any]]:
    """A customer's cart: the products they put in it, one occasion from the first until
    it was left ``after_minutes`` after the newest addition (the products bought
    meanwhile are taken out when it is due; all bought drops it)."""
    carts = events[events["event_type"] == "cart"]
    found = []
    for customer, added in carts.groupby("customer_id", sort=False):
        moments = [_naive(at) for at in added["timestamp"]]
        first, latest = min(moments), max(moments)
        products = list(dict.fromkeys(str(p) for p in added.sort_values("timestamp")["product_id"]))
        found.append(occasion(trigger, str(customer), first.isoformat(), products, first,
                              latest))
    return found


def first_purchases(engine: Engine, store: Store, trigger: Trigger, events: pd.DataFrame
                    ) -> list[dict[str, Any]]:
    """A customer's first purchase ever: none in the snapshot the model learnt from, none
    stored before it. Once per customer."""
    bought = events[events["event_type"] == "purchase"]
    if bought.empty:
        return []
    first = bought.sort_values("timestamp").drop_duplicates("customer_id")
    rows = engine.state.customers.index_of(first["customer_id"].astype(str))
    known_first = np.where(rows >= 0, engine.state.first_ns[np.maximum(rows, 0)], NO_TIME)
    first = first[known_first == NO_TIME]
    if first.empty:
        return []
    earliest: dict[str, datetime] = {}  # stored purchases and conversions up to the batch's
    for r in store.purchases_between(first["customer_id"], datetime(1970, 1, 1),
                                     _naive(first["timestamp"].max())):
        at = _naive(r.timestamp)
        earliest[r.customer_id] = min(at, earliest.get(r.customer_id, at))
    return [occasion(trigger, str(e.customer_id), "first", [str(e.product_id)],
                     _naive(e.timestamp))
            for e in first.itertuples(index=False)
            if earliest.get(e.customer_id, _naive(e.timestamp)) >= _naive(e.timestamp)]


def category_streaks(engine: Engine, store: Store, trigger: Trigger, events: pd.DataFrame
                     ) -> list[dict[str, Any]]:
    """``views`` views of one category within ``within_minutes``, counted at each new view;
    at most one occasion per customer and category in each ``within_minutes`` period."""
    views = events[events["event_type"] == "view"]
    if views.empty:
        return []
    window = timedelta(minutes=trigger.within_minutes)
    start = _naive(views["timestamp"].min()) - window
    seen = pd.DataFrame(store.views_between(views["customer_id"].unique(), start,
                                            _naive(views["timestamp"].max())),
                        columns=["customer_id", "product_id", "timestamp"])
    offers = engine.offers
    category = offers.categories[offers.category[engine.items.index_of(seen["product_id"])]]
    seen = seen.assign(category=category, at=pd.to_datetime(seen["timestamp"]))
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    period_ns = int(window.total_seconds() * 1e9)
    for e in views.itertuples(index=False):
        at = pd.Timestamp(_naive(e.timestamp))
        mine = seen[seen["customer_id"] == e.customer_id]
        kind = mine.loc[mine["product_id"] == e.product_id, "category"]
        if kind.empty:
            continue
        name = str(kind.iloc[0])
        streak = mine[(mine["category"] == name) & (mine["at"] > at - window)
                      & (mine["at"] <= at)]
        if len(streak) >= trigger.views:
            bucket = at.value // period_ns
            customer = str(e.customer_id)
            found.setdefault((customer, name, bucket), occasion(
                trigger, customer, f"{name}|{bucket}", [name], at.to_pydatetime()))
    return list(found.values())


def crossings(engine: Engine, store: Store, trigger: Trigger, previous_ns: int,
              now: datetime) -> list[dict[str, Any]]:
    """Customers of the served model whose stage is the trigger's at ``now`` and was not at
    the last pass's moment (purchases since the snapshot count); once per crossing."""
    state = engine.state
    first, last = state.first_ns.copy(), state.last_ns.copy()
    live = store.purchase_bounds(engine.as_of, now)
    if not live.empty:
        rows = state.customers.index_of(live["customer_id"].astype(str))
        known = rows >= 0
        rows = rows[known]
        live_first = pd.to_datetime(live["first"]).to_numpy("datetime64[ns]")[known].view(
            np.int64)
        live_last = pd.to_datetime(live["last"]).to_numpy("datetime64[ns]")[known].view(
            np.int64)
        first[rows] = np.where(first[rows] == NO_TIME, live_first,
                               np.minimum(first[rows], live_first))
        last[rows] = np.maximum(last[rows], live_last)

    def stages(at_ns: int) -> np.ndarray:
        bought = first != NO_TIME
        since_first = np.where(bought, (at_ns - first) / NS_PER_DAY, np.nan)
        since_last = np.where(bought, (at_ns - last) / NS_PER_DAY, np.nan)
        return stage_from_days(since_first, since_last, state.usual_gap,
                               state.lifecycle)

    crossed = np.flatnonzero((stages(moment_ns(now)) == trigger.stage)
                             & (stages(previous_ns) != trigger.stage))
    names = state.customers.names
    return [occasion(trigger, str(names[row]), f"{trigger.stage}|{int(last[row])}", [],
                     now) for row in crossed]


def birthdays(engine: Engine, trigger: Trigger, contact: Contact, previous_ns: int,
              now: datetime) -> list[dict[str, Any]]:
    """Customers of the served model whose birthday began (midnight in their time zone)
    after the last pass's moment and by ``now``, at most a day ago (a birthday a stopped
    service missed by more is past); once a year. 29 February falls on the 28th in other
    years."""
    state = engine.state
    start = max(pd.Timestamp(previous_ns), pd.Timestamp(now) - pd.Timedelta(days=1))
    # only customers born on a day near the pass, in any time zone (a day either side)
    days_near = pd.date_range((start - pd.Timedelta(days=1)).normalize(),
                              pd.Timestamp(now) + pd.Timedelta(days=1), freq="D")
    codes = set(days_near.month * 100 + days_near.day)
    codes |= {229} if 228 in codes else set()
    known = np.flatnonzero(np.isin(state.birthday, list(codes)))
    if not len(known):
        return []
    zones = (pd.Series(state.region[known], dtype=object).map(contact.region_time_zones)
             .fillna(contact.time_zone).to_numpy(dtype=object))
    found = []
    for zone in np.unique(zones):
        rows = known[zones == zone]
        month, day = state.birthday[rows] // 100, state.birthday[rows] % 100
        years = [moment.tz_localize("UTC").tz_convert(zone).year
                 for moment in (start, pd.Timestamp(now))]
        for year in range(years[0], years[1] + 1):
            days = day
            if not pd.Timestamp(year=year, month=1, day=1).is_leap_year:
                days = np.where((month == 2) & (day == 29), 28, day)
            midnight = pd.to_datetime(pd.DataFrame({"year": year, "month": month, "day": days}))
            moments = (pd.DatetimeIndex(midnight).tz_localize(zone, ambiguous="NaT",
                                                              nonexistent="shift_forward")
                       .tz_convert("UTC").tz_localize(None))
            began = (moments > start) & (moments <= pd.Timestamp(now))
            for row, at, on in zip(rows[began], moments[began], days[began], strict=True):
                found.append(occasion(trigger, str(state.customers.names[row]), str(year),
                                      [f"{year}-{state.birthday[row] // 100:02d}-{on:02d}"],
                                      at.to_pydatetime()))
    return found


def bought_since(store: Store, carts: list[Any], now: datetime) -> dict[int, list[str]]:
    """For each cart (by occasion id), its products not bought (purchased or converted)
    since it was started: empty where all were."""
    if not carts:
        return {}
    start = min(_naive(row.since) for row in carts)
    bought = {(r.customer_id, r.product_id, _naive(r.timestamp)) for r in
              store.purchases_between((row.customer_id for row in carts), start, now)}
    return {row.id: [product for product in json.loads(row.subject)
                     if not any(customer == row.customer_id and got == product
                                and at >= _naive(row.since) for customer, got, at in bought)]
            for row in carts}


# --- the customer at the moment ---------------------------------------------------------

def stage_now(engine: Engine, customer_id: str, now: datetime) -> str:
    return engine.staged(Request(customer_id), now, NO_EXPOSURE)[2]


def quiet_until(contact: Contact, engine: Engine, customer_id: str, now: datetime
                ) -> datetime | None:
    """The end of the quiet hours (naive UTC) where ``now`` is in them for the customer,
    in the time zone of their region; None where a message may go now."""
    quiet = contact.quiet_hours
    if quiet is None:
        return None
    zone = ZoneInfo(contact.zone_of(engine.state.region_of(engine.state.row_of(customer_id))))
    local = now.replace(tzinfo=UTC).astimezone(zone)
    if not quiet.holds(local.time()):
        return None
    end = datetime.combine(local.date(), quiet.end, tzinfo=zone)
    if end <= local:
        end += timedelta(days=1)
    return end.astimezone(UTC).replace(tzinfo=None)


def _naive(value: Any) -> datetime:
    moment = pd.Timestamp(value).to_pydatetime()
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def feed_page(store: Store, after: int, limit: int, dropped: bool) -> tuple[list[dict[str, Any]],
                                                                            int]:
    """A page of the feed and the cursor to ask from next (``after`` where it is empty)."""
    rows = store.feed(after, limit, dropped)
    return [decision(row) for row in rows], int(rows[-1].cursor) if rows else after

