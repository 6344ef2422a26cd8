"""What a customer did since the model's snapshot, as offer indices: purchases (conversions
count as purchases), returns, carts, views and wish lists from the events posted to /events,
dismissals from the feedback log, and what the request itself says (the product on the page,
the session, the cart). Read from the store on every request, so an event acknowledged by any
worker counts on the next request in every worker.

Events the model's offers do not know (a product added since training) are left out here;
they are kept in the store and reach the next training through ``nbo store export``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.columns import EventType as E
from features.config import EventWeights
from features.ids import IdMap
from features.weights import contributions
from serving.state import moment_ns
from serving.store import NO_TIME, Exposure, LiveEvent

EMPTY = np.zeros(0, np.int64)
NO_WEIGHTS = np.zeros(0)


@dataclass(frozen=True)
class Activity:
    """One customer's activity since the snapshot, plus the request's own context, as offer
    indices: ``bought`` (or converted) with ``bought_ns``, when each was last bought;
    ``returned``; ``carted`` (also the request's cart); ``wished``; ``seen`` (viewed or rated,
    the session, the page); ``page``, the product on the page, never offered; ``dismissed``,
    resting after a dismissal; ``added``, the offers whose history weight the activity
    changes, by ``weights``."""

    bought: np.ndarray
    bought_ns: np.ndarray
    returned: np.ndarray
    carted: np.ndarray
    wished: np.ndarray
    seen: np.ndarray
    page: np.ndarray
    dismissed: np.ndarray
    added: np.ndarray
    weights: np.ndarray

    @classmethod
    def only(cls, **given: np.ndarray) -> Activity:
        """An activity of ``given`` alone, nothing else."""
        empty = {name: EMPTY for name in cls.__dataclass_fields__} | {"weights": NO_WEIGHTS}
        return cls(**(empty | given))

    @property
    def changes_history(self) -> bool:
        return len(self.added) > 0

    def first_and_last_purchase(self) -> tuple[int, int]:
        """The earliest and latest purchase since the snapshot (``NO_TIME`` for none)."""
        if not len(self.bought_ns):
            return int(NO_TIME), int(NO_TIME)
        return int(self.bought_ns.min()), int(self.bought_ns.max())


NOTHING = Activity.only()


def activity(events: list[LiveEvent], exposure: Exposure, items: IdMap, now_ns: int,
             weights: EventWeights, session: np.ndarray = EMPTY, cart: np.ndarray = EMPTY,
             page: np.ndarray = EMPTY) -> Activity:
    """``events``: the customer's live events (any order); ``session``, ``cart``, ``page``:
    offer indices from the request."""
    if not events and not len(session) and not len(cart) and not len(page) \
            and not _responded(exposure):
        return NOTHING  # most requests: nothing since the snapshot
    rows = items.index_of([e.product_id for e in events]) if events else EMPTY
    known = rows >= 0
    if not known.all():
        rows, events = rows[known], [e for e, k in zip(events, known, strict=True) if k]
    kinds = np.array([e.event_type for e in events], dtype=object)
    times = np.fromiter((moment_ns(e.timestamp) for e in events), dtype=np.int64, count=len(events))
    masks = {kind: kinds == kind for kind in E.all}
    converted = _converted(exposure, items)
    bought, bought_ns = _latest(_ints(rows[masks[E.purchase]], converted[0]),
                                _ints(times[masks[E.purchase]], converted[1]))
    dismissed = _dismissed(exposure, items)
    weight = contributions(
        masks, np.array([e.quantity for e in events], dtype=float),
        np.array([np.nan if e.rating is None else e.rating for e in events], dtype=float),
        times, now_ns, weights)
    # a conversion weighs as a purchase; the request's context as views and a cart
    extra = np.repeat([weights.purchase, weights.view, weights.cart],
                      [len(converted[0]), len(session) + len(page), len(cart)])
    added, summed = _summed(_ints(rows, converted[0], session, page, cart),
                            np.concatenate((weight, extra)))
    return Activity(
        bought=bought, bought_ns=bought_ns, returned=_unique(rows[masks[E.return_]]),
        carted=_unique(_ints(rows[masks[E.cart]], cart)),
        wished=_unique(rows[masks[E.wishlist]]),
        seen=_unique(_ints(rows[masks[E.view] | masks[E.rating]], session, page)),
        page=_unique(page.astype(np.int64)), dismissed=dismissed, added=added,
        weights=summed)


def _ints(*parts: np.ndarray) -> np.ndarray:
    """``parts`` one after the other, as int64 (np.r_ took ten times as long)."""
    return np.concatenate(parts).astype(np.int64, copy=False)


def _unique(rows: np.ndarray) -> np.ndarray:
    """np.unique of int64 offer rows; an empty one (most kinds of a request's events)
    without its few microseconds."""
    return np.unique(rows) if len(rows) else EMPTY


def with_history(stored: np.ndarray, stored_weights: np.ndarray, act: Activity,
                 n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The customer's history row (offer indices, weights) with the activity added: only
    positive weights stay, and a returned offer leaves it."""
    dense = np.zeros(n_items, dtype=np.float64)
    dense[stored] = stored_weights
    np.add.at(dense, act.added, act.weights)
    dense[act.returned] = 0.0
    keep = np.flatnonzero(dense > 0)
    return keep, dense[keep]


def _responded(exposure: Exposure) -> bool:
    """Whether the feedback log holds a conversion or dismissal that counts."""
    return bool(exposure.dismissed.any() or (exposure.converted_ns != NO_TIME).any())


def _latest(rows: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One entry per offer with its latest time."""
    if not len(rows):
        return EMPTY, EMPTY
    order = np.lexsort((-times, rows))
    rows, times = rows[order], times[order]
    first = np.ones(len(rows), dtype=bool)
    np.not_equal(rows[1:], rows[:-1], out=first[1:])
    return rows[first], times[first]


def _summed(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(rows):
        return EMPTY, NO_WEIGHTS
    unique, inverse = np.unique(rows, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=len(unique))


def _converted(exposure: Exposure, items: IdMap) -> tuple[np.ndarray, np.ndarray]:
    if not len(exposure.product_ids):
        return EMPTY, EMPTY
    rows = items.index_of(exposure.product_ids)
    hit = (rows >= 0) & (exposure.converted_ns != NO_TIME)
    return rows[hit], exposure.converted_ns[hit]


def _dismissed(exposure: Exposure, items: IdMap) -> np.ndarray:
    if not len(exposure.product_ids):
        return EMPTY
    rows = items.index_of(exposure.product_ids)
    return rows[(rows >= 0) & exposure.dismissed]
