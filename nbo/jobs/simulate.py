"""A response simulator: customers of a generated shop visit a running service, see its
rankings and mails, and click and buy as their hidden tastes make likely.

Each simulated day every simulated customer visits the storefront once (``/rank`` on the web
channel at a random moment of the day); every ``mail_every`` days they are sent the newsletter
(``/newsletter``). An offer shown at position ``p`` is clicked with probability
``click x affinity / log2(p + 1)`` (plus ``floor`` for any offer), where affinity (0 to 1) is
how well it fits the customer's hidden taste (:meth:`features.generate.Tastes.affinity`); a
click converts with probability ``convert x affinity``. The simulator posts every impression,
click and conversion to ``/feedback`` with the list's request id, and each conversion as a
purchase to ``/events``, so the service's contact caps, exclusions and reports see them.

It also keeps what the responses were expected to be (the sum of the probabilities), per
customer: the truth a report's estimate can be held against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.generate import Tastes

AT_ONCE = 1000  # customers per /newsletter call
POSTED_AT_ONCE = 10_000  # events per /feedback or /events call


class Http(Protocol):
    """What the simulator needs of an HTTP client (httpx.Client, Starlette's TestClient)."""

    def post(self, url: str, *, json: Any = None) -> Any: ...


@dataclass(frozen=True)
class Response:
    """How likely customers respond: the click probability of an offer that fits perfectly
    at the first position, a floor for any offer, the share of fitting clicks that convert,
    and the same for mail (``mail_click``)."""

    click: float = 0.5
    floor: float = 0.002
    convert: float = 0.4
    mail_click: float = 0.25

    def __post_init__(self) -> None:
        for name in ("click", "floor", "convert", "mail_click"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"the response's {name} is a probability, 0 to 1")

    def click_probability(self, affinity: np.ndarray, positions: np.ndarray,
                          channel: str) -> np.ndarray:
        scale = self.mail_click if channel == "email" else self.click
        return np.clip(scale * affinity / np.log2(positions + 1) + self.floor, 0, 1)

    def conversion_probability(self, affinity: np.ndarray) -> np.ndarray:
        return np.clip(self.convert * affinity, 0, 1)


@dataclass
class Simulated:
    """What a simulation did: calls, what was shown and done, and per customer the clicks
    and conversions expected and drawn."""

    lists: int = 0
    mails: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    refused: int = 0  # calls the service answered with an error
    customers: pd.DataFrame = field(default_factory=pd.DataFrame)


class Simulator:
    def __init__(self, http: Http, tastes: Tastes, response: Response | None = None,
                 seed: int = 0) -> None:
        self.http, self.tastes = http, tastes
        self.response = response or Response()
        self.rng = np.random.default_rng(seed)
        self.rows = pd.Series(np.arange(len(tastes.customers)), index=tastes.customers)
        self.columns = pd.Series(np.arange(len(tastes.products)), index=tastes.products)
        self.feedback: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def pick(self, customers: int) -> np.ndarray:
        """``customers`` of the shop at random (all of them where it has fewer)."""
        n = min(customers, len(self.tastes.customers))
        return np.sort(self.rng.choice(len(self.tastes.customers), n, replace=False))

    def run(self, customers: int, days: int, start: datetime, k: int = 10,
            mail_every: int = 7, advance: Callable[[int], None] | None = None) -> Simulated:
        """Simulate ``days`` days from ``start`` for ``customers`` customers."""
        if days < 1 or customers < 1:
            raise ValueError("simulate at least one customer for at least one day")
        who = self.pick(customers)
        ids = self.tastes.customers[who]
        expected = np.zeros((len(who), 2))  # clicks, conversions
        drawn = np.zeros((len(who), 2))
        done = Simulated()
        for day in range(days):
            midnight = start + timedelta(days=day)
            moments = self.rng.uniform(0, 86_400, len(who))
            for n in np.argsort(moments):
                at = midnight + timedelta(seconds=float(moments[n]))
                answer = self.http.post("/rank", json={
                    "customer_id": ids[n], "channel": "web", "k": k,
                    "context": {"now": at.isoformat()}})
                if answer.status_code != 200:
                    done.refused += 1
                    continue
                body = answer.json()
                done.lists += 1
                self._respond(n, who[n], ids[n], body["request_id"], "web",
                              [o["product_id"] for o in body["offers"]], at, expected, drawn,
                              done)
            if mail_every and day % mail_every == 0:
                self._mail(who, ids, midnight + timedelta(hours=9), expected, drawn, done)
            self._post()
            if advance is not None:
                advance(1)
        done.customers = pd.DataFrame({
            "customer_id": ids, "expected_clicks": expected[:, 0],
            "expected_conversions": expected[:, 1], "clicks": drawn[:, 0],
            "conversions": drawn[:, 1]})
        return done

    def _mail(self, who: np.ndarray, ids: np.ndarray, at: datetime, expected: np.ndarray,
              drawn: np.ndarray, done: Simulated) -> None:
        place = {customer: n for n, customer in enumerate(ids)}
        for first in range(0, len(ids), AT_ONCE):
            answer = self.http.post("/newsletter", json={
                "customers": list(ids[first:first + AT_ONCE]), "now": at.isoformat()})
            if answer.status_code != 200:
                done.refused += 1
                continue
            body = answer.json()
            for letter in body["letters"]:
                if not letter["blocks"]:
                    continue
                n = place[letter["customer_id"]]
                done.mails += 1
                self._respond(n, who[n], ids[n], body["request_id"], "email",
                              [b["product_id"] for b in letter["blocks"]], at, expected,
                              drawn, done)

    def _respond(self, n: int, row: int, customer_id: str, request_id: str, channel: str,
                 products: list[str], at: datetime, expected: np.ndarray, drawn: np.ndarray,
                 done: Simulated) -> None:
        """Draw the customer's clicks and conversions on one list and queue them."""
        if not products:
            return
        columns = self.columns.reindex(products).fillna(-1).to_numpy(np.int64)
        affinity = np.where(columns >= 0, self.tastes.affinity(
            np.full(len(columns), row), np.maximum(columns, 0)), 0.0)
        positions = np.arange(1, len(products) + 1)
        p_click = self.response.click_probability(affinity, positions, channel)
        p_convert = self.response.conversion_probability(affinity)
        expected[n] += [p_click.sum(), (p_click * p_convert).sum()]
        clicked = self.rng.random(len(products)) < p_click
        converted = clicked & (self.rng.random(len(products)) < p_convert)
        drawn[n] += [clicked.sum(), converted.sum()]
        done.impressions += len(products)
        done.clicks += int(clicked.sum())
        done.conversions += int(converted.sum())
        base = {"customer_id": customer_id, "channel": channel, "request_id": request_id}
        for i, product in enumerate(products):
            shown = {**base, "product_id": product, "position": i + 1}
            self.feedback.append({**shown, "action": "impression",
                                  "timestamp": at.isoformat()})
            if clicked[i]:
                later = at + timedelta(seconds=30 + i)
                self.feedback.append({**shown, "action": "click",
                                      "timestamp": later.isoformat()})
            if converted[i]:
                later = at + timedelta(minutes=5, seconds=i)
                self.feedback.append({**shown, "action": "conversion",
                                      "timestamp": later.isoformat()})
                self.events.append({"event_id": f"sim-{request_id}-{customer_id}-{i}",
                                    "customer_id": customer_id, "product_id": product,
                                    "event_type": "purchase", "timestamp": later.isoformat(),
                                    "quantity": 1, "channel": channel})

    def _post(self) -> None:
        """Hand the queued feedback and purchases to the service; an answer other than 200
        stops the simulation, saying what the service said."""
        for route, queued in (("/feedback", self.feedback), ("/events", self.events)):
            for first in range(0, len(queued), POSTED_AT_ONCE):
                answer = self.http.post(route, json={
                    "events": queued[first:first + POSTED_AT_ONCE]})
                if answer.status_code != 200:
                    raise RuntimeError(f"{route} answered {answer.status_code}: "
                                       f"{answer.text[:300]}")
            queued.clear()


def true_lift(customers: pd.DataFrame, arm_of: Callable[[str], str], control: str,
              metric: str = "expected_clicks") -> dict[str, float]:
    """Per arm, the difference of its customers' mean expected ``metric`` to the control
    arm's: what a report's lift estimates."""
    arms = customers["customer_id"].map(arm_of)
    means = customers.groupby(arms)[metric].mean()
    return {str(arm): float(means[arm] - means[control]) for arm in means.index
            if arm != control and math.isfinite(means[arm])}
