"""Attribution: which served offer a click, a conversion or a purchase is credited to.

An outcome is credited to one shown offer, the touch:
- a click or conversion posted to ``/feedback`` with the ``request_id`` of the list that showed
  the product goes to that list;
- any other click, conversion, and every purchase posted to ``/events``, goes to the last list
  that showed the same customer the same product before the outcome and at most
  ``window_days`` before it (last touch). Outcomes with no such list are not credited.

A shown offer counts as clicked and as converted at most once. Its revenue is the price times
the quantity of the purchases credited to it, or the price once where only a conversion
(feedback without a purchase event) was credited; its margin is that revenue times the
offer's margin share. Customers are known by their keyed token only, as the decision log keeps
them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.columns import Columns as C

if TYPE_CHECKING:
    from serving.store import Store

WINDOW_DAYS = 7.0
CLICK, CONVERSION, PURCHASE = "click", "conversion", "purchase"


@dataclass(frozen=True)
class Prices:
    """Per product: price and margin share (of the price), as the catalogue gives them."""

    price: pd.Series
    margin: pd.Series

    @classmethod
    def of(cls, products: Any, price: Any, margin: Any) -> Prices:
        """Prices of parallel arrays (unknown ones 0): the catalogue's, or the engine's."""
        return cls(pd.Series(price, index=products, dtype=float).fillna(0.0),
                   pd.Series(margin, index=products, dtype=float).fillna(0.0))

    @classmethod
    def from_offers(cls, offers: pd.DataFrame) -> Prices:
        table = offers.set_index(C.product)
        nothing = pd.Series(0.0, index=table.index)
        return cls.of(table.index, pd.to_numeric(table.get(C.price, nothing), errors="coerce"),
                      pd.to_numeric(table.get(C.margin, nothing), errors="coerce"))


NO_PRICES = Prices(pd.Series(dtype=float), pd.Series(dtype=float))  # for rates, no revenue


def credited(store: Store, shown: pd.DataFrame, prices: Prices = NO_PRICES,
             window_days: float = WINDOW_DAYS) -> pd.DataFrame:
    """``shown`` (the store's decision log, see :meth:`Store.decisions_frame`) with what the
    store's feedback and events credit to each offer shown (:func:`attribute`)."""
    events, _ = store.events_frame()
    happened = outcomes(store.feedback_frame(), events, store.tokens)
    return attribute(shown, happened, prices, window_days)


def outcomes(feedback: pd.DataFrame, events: pd.DataFrame,
             token: Callable[[np.ndarray], np.ndarray]) -> pd.DataFrame:
    """Clicks and conversions of the feedback log and purchases of the events, one row each:
    token, product, kind, moment, request id (feedback only) and quantity."""
    fb = feedback[feedback[C.action].isin([CLICK, CONVERSION])]
    bought = events[events[C.event_type] == PURCHASE]
    frame = pd.concat([
        pd.DataFrame({"customer": fb[C.customer].to_numpy(), C.product: fb[C.product].to_numpy(),
                      "kind": fb[C.action].to_numpy(),
                      "at": pd.to_datetime(fb[C.timestamp]).to_numpy(),
                      "request_id": fb[C.request_id].to_numpy(), "quantity": 1}),
        pd.DataFrame({"customer": bought[C.customer].to_numpy(),
                      C.product: bought[C.product].to_numpy(), "kind": PURCHASE,
                      "at": pd.to_datetime(bought[C.timestamp]).to_numpy(),
                      "request_id": None,
                      "quantity": bought[C.quantity].to_numpy()}),
    ], ignore_index=True)
    frame["token"] = token(frame["customer"].to_numpy(dtype=str)) if len(frame) else []
    return frame.drop(columns="customer")


def attribute(shown: pd.DataFrame, happened: pd.DataFrame, prices: Prices,
              window_days: float = WINDOW_DAYS) -> pd.DataFrame:
    """``shown`` (the decision log, one row per offer shown) with what was credited to each
    row: clicked, converted, revenue and margin."""
    shown = shown.reset_index(drop=True)
    touch = pd.Series(-1, index=happened.index, dtype=np.int64)
    if len(shown) and len(happened):
        keyed = pd.Series(shown.index, index=pd.MultiIndex.from_arrays(
            [shown["request_id"], shown[C.product]])).groupby(level=[0, 1]).first()
        named = happened["request_id"].notna()
        keys = pd.MultiIndex.from_arrays([happened.loc[named, "request_id"],
                                          happened.loc[named, C.product]])
        touch[named] = keyed.reindex(keys).fillna(-1).astype(np.int64).to_numpy()
        touch[touch < 0] = _last_touch(shown, happened[touch < 0], window_days)
    credited = happened.assign(row=touch.to_numpy())
    credited = credited[credited["row"] >= 0]
    kinds = credited.pivot_table(index="row", columns="kind", values="quantity",
                                 aggfunc="sum", fill_value=0)
    bought = kinds.get(PURCHASE, pd.Series(0, index=kinds.index))
    converted = (kinds.get(CONVERSION, pd.Series(0, index=kinds.index)) > 0) | (bought > 0)
    out = shown.copy()
    out["clicked"] = kinds.get(CLICK, pd.Series(dtype=float)).reindex(out.index).fillna(0) > 0
    out["converted"] = converted.reindex(out.index, fill_value=False).astype(bool)
    units = bought.where(bought > 0, 1).where(converted, 0).reindex(out.index).fillna(0)
    price = prices.price.reindex(out[C.product]).fillna(0.0).to_numpy()
    out["revenue"] = units.to_numpy() * price
    out["margin"] = out["revenue"] * prices.margin.reindex(out[C.product]).fillna(0.0).to_numpy()
    return out


def _last_touch(shown: pd.DataFrame, happened: pd.DataFrame, window_days: float) -> np.ndarray:
    """Per outcome, the row of the last list that showed the customer the product within
    the window before it; -1 where none did."""
    if not len(happened):
        return np.zeros(0, np.int64)
    left = happened.assign(order=np.arange(len(happened)), at=pd.to_datetime(happened["at"]))
    right = shown.assign(row=shown.index.to_numpy(),
                         at=pd.to_datetime(shown["decided_at"]))[["token", C.product, "at", "row"]]
    matched = pd.merge_asof(left.sort_values("at"), right.sort_values("at"), on="at",
                            by=["token", C.product], direction="backward",
                            tolerance=pd.Timedelta(days=window_days))
    rows = matched.sort_values("order")["row"].fillna(-1).astype(np.int64)
    return rows.to_numpy()
