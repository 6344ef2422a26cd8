"""What serving knows of each customer, as arrays in the model's customer order: their
profile (lifecycle dates, region, birth year, segment), what they bought and returned, their
last visit. The id map is the model's own, so a customer the model forgets is unknown here on
the same call."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import sparse

from features.columns import Columns as C
from features.config import LifecycleConfig
from features.context import BIRTHDAY
from features.ids import MISSING, IdMap
from features.side import CUSTOMER_FEATURES
from features.state import age_band, stage_from_days, stage_of
from training.fallbacks import RegionalPopularity

NS_PER_DAY = 86_400 * 10**9
NO_TIME = np.iinfo(np.int64).min
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)


class HasCustomers(Protocol):
    """Whoever owns the customer id map (the model): its map is read on every call."""

    customers: IdMap


class CustomerState:
    """Per-customer arrays aligned to the owner's id map; a profile row the map does not
    know is dropped, a customer without a profile row is treated as a prospect."""

    def __init__(self, owner: HasCustomers, items: IdMap, tables: dict[str, pd.DataFrame],
                 lifecycle: LifecycleConfig) -> None:
        self.owner, self.items, self.lifecycle = owner, items, lifecycle
        profile = tables["customers"]
        profile = profile.set_index(profile[C.customer].astype(str)).reindex(self.customers.ids)
        self.first_ns = nanoseconds(profile["first_purchase"])
        self.last_ns = nanoseconds(profile["last_purchase"])
        # own, writable copies: erasure clears a customer's row in place
        self.usual_gap = profile["usual_gap_days"].to_numpy(dtype=float, copy=True)
        self.region = _objects(profile[C.region])
        self.birth_year = pd.to_numeric(profile[C.birth_year], errors="coerce").to_numpy(
            float, copy=True)
        self.segment = _objects(profile["segment"])
        self.birthday = birthdays(profile)
        bought = tables["bought"]
        self.bought = self._matrix(bought, nanoseconds(bought["last_purchase"])
                                   .astype(np.float64) / NS_PER_DAY)
        self.returned = self._matrix(tables["returned"], None)
        visits = tables["last_visit"]
        self.last_visit = self._matrix(visits, visits["position"].to_numpy(float) + 1.0)
        self.popular_in_region = RegionalPopularity(self.region, self.bought)

    @property
    def customers(self) -> IdMap:
        return self.owner.customers

    def _matrix(self, frame: pd.DataFrame, values: np.ndarray | None) -> sparse.csr_matrix:
        rows = self.customers.index_of(frame[C.customer])
        cols = self.items.index_of(frame[C.product])
        keep = (rows >= 0) & (cols >= 0)
        data = np.ones(len(frame)) if values is None else np.asarray(values, dtype=np.float64)
        return sparse.csr_matrix((data[keep], (rows[keep], cols[keep])),
                                 shape=(len(self.customers), len(self.items)))

    # --- reading ------------------------------------------------------------------------

    def row_of(self, customer_id: str) -> int:
        """The customer's row, ``MISSING`` for one serving does not know (or erased)."""
        return self.customers.row(customer_id)

    def stage(self, row: int, now_ns: int, since: tuple[int, int] = (NO_TIME, NO_TIME)
              ) -> str:
        """The lifecycle stage at ``now_ns``; ``since``: the first and last purchase after
        the snapshot (``NO_TIME``: none), which move it (a prospect who buys is new)."""
        first = self.first_ns[row] if row >= 0 else NO_TIME
        last = self.last_ns[row] if row >= 0 else NO_TIME
        if since[0] != NO_TIME:
            first = since[0] if first == NO_TIME else min(first, since[0])
            last = max(last, since[1])
        if first == NO_TIME:  # never bought
            return stage_of(math.nan, math.nan, math.nan, self.lifecycle)
        gap = float(self.usual_gap[row]) if row >= 0 else math.nan
        return stage_of(float(np.int64(now_ns) - np.int64(first)) / NS_PER_DAY,
                        float(np.int64(now_ns) - np.int64(last)) / NS_PER_DAY, gap,
                        self.lifecycle)

    def stages(self, rows: np.ndarray, now_ns: int) -> np.ndarray:
        """:meth:`stage` of many known customers with nothing bought since the snapshot."""
        return self._stages(self.first_ns[rows], self.last_ns[rows], self.usual_gap[rows],
                            now_ns)

    def _stages(self, first: np.ndarray, last: np.ndarray, gap: np.ndarray, now_ns: int
                ) -> np.ndarray:
        bought = first != NO_TIME  # the others never bought: NaN days make them prospects
        days, since_last = np.full(len(first), np.nan), np.full(len(first), np.nan)
        days[bought] = (now_ns - first[bought]) / NS_PER_DAY
        since_last[bought] = (now_ns - last[bought]) / NS_PER_DAY
        return stage_from_days(days, since_last, gap, self.lifecycle)

    def age(self, row: int, now: datetime) -> int | None:
        if row < 0 or np.isnan(self.birth_year[row]):
            return None
        return now.year - int(self.birth_year[row])

    def region_of(self, row: int) -> str | None:
        return self.region[row] if row >= 0 else None

    @property
    def regions(self) -> pd.Index:
        return self.popular_in_region.names

    def regional_scores(self, region: str | None) -> np.ndarray | None:
        """Popularity among the region's customers, None for a region nobody lives in."""
        return self.popular_in_region.of(region)

    def profile(self, row: int, region: str | None, stage: str, now: datetime
                ) -> pd.DataFrame:
        """What is known of a customer the model cannot score by history, as its features."""
        birth = self.birth_year[row] if row >= 0 else np.nan
        values = {C.region: region, "lifecycle_stage": stage,
                  "age_band": age_band(pd.Series([birth]), pd.Timestamp(now))[0],
                  "segment": self.segment[row] if row >= 0 else None}
        return pd.DataFrame({name: [values[name]] for name in CUSTOMER_FEATURES})

    def described(self, row: int, now_ns: int) -> dict[str, Any]:
        """What serving holds of customer ``row`` (-1: nothing), readable: the profile and
        the offers bought (with days since), returned and seen on the last visit."""
        if row < 0:
            return {}
        names = self.items.names
        bought, days_ago = self.purchases(row, now_ns)

        def moment(ns: int) -> str | None:
            return None if ns == NO_TIME else pd.Timestamp(ns).isoformat()

        birthday = int(self.birthday[row])
        return {"region": _text(self.region[row]), "segment": _text(self.segment[row]),
                "birthday": f"{birthday // 100:02d}-{birthday % 100:02d}" if birthday else None,
                "birth_year": None if np.isnan(self.birth_year[row])
                else int(self.birth_year[row]),
                "first_purchase": moment(int(self.first_ns[row])),
                "last_purchase": moment(int(self.last_ns[row])),
                "usual_gap_days": None if np.isnan(self.usual_gap[row])
                else round(float(self.usual_gap[row]), 2),
                "bought": [{"product_id": str(names[i]), "days_ago": round(float(d), 1)}
                           for i, d in zip(bought, days_ago, strict=True)],
                "returned": [str(names[i]) for i in self.returns(row)],
                "last_visit": [str(names[i]) for i in self.visited(row)]}

    def purchases(self, row: int, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Offers the customer bought and how many days ago they last bought each."""
        if row < 0:
            return np.zeros(0, np.int64), np.zeros(0)
        start, end = self.bought.indptr[row], self.bought.indptr[row + 1]
        return self.bought.indices[start:end], now_ns / NS_PER_DAY - self.bought.data[start:end]

    def returns(self, row: int) -> np.ndarray:
        if row < 0:
            return np.zeros(0, np.int64)
        return self.returned.indices[self.returned.indptr[row]:self.returned.indptr[row + 1]]

    def visited(self, row: int) -> np.ndarray:
        """Offers of the customer's last visit."""
        if row < 0:
            return np.zeros(0, np.int64)
        return self.last_visit.indices[self.last_visit.indptr[row]:self.last_visit.indptr[row + 1]]

    def bought_together(self, anchor: int) -> np.ndarray:
        """Per offer, how many of the customers who bought ``anchor`` bought it too, scaled
        so the most frequent counts 1."""
        buyers = self.bought[:, anchor].nonzero()[0]
        together = np.asarray((self.bought[buyers] > 0).sum(axis=0), dtype=np.float64).ravel()
        return together / max(float(together.max(initial=0.0)), 1.0)

    # --- erasure ------------------------------------------------------------------------

    def forget(self, customer_id: str) -> int:
        """Clear the customer's row (before the owner forgets their id); 1 if it was held."""
        row = self.row_of(customer_id)
        if row == MISSING:
            return 0
        for name in ("bought", "returned", "last_visit"):
            matrix = getattr(self, name).tolil()
            matrix.rows[row], matrix.data[row] = [], []
            setattr(self, name, matrix.tocsr())
        self.first_ns[row] = self.last_ns[row] = NO_TIME
        self.usual_gap[row], self.birth_year[row] = np.nan, np.nan
        self.birthday[row] = 0
        self.region[row] = self.segment[row] = None
        return 1


def birthdays(profile: pd.DataFrame) -> np.ndarray:
    """Each customer's birthday as month * 100 + day, 0 where unknown (or the model was
    made before birth dates were kept)."""
    if BIRTHDAY not in profile:
        return np.zeros(len(profile), np.int16)
    return profile[BIRTHDAY].fillna(0).to_numpy(np.int16)


def moment_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, of UTC where ``moment`` names a time zone (as numpy's
    datetime64 reads it), in integer arithmetic: numpy's conversion cost 3 us, which a
    request paid for each of its live events."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - EPOCH) // MICROSECOND * 1000


def nanoseconds(values: pd.Series) -> np.ndarray:
    times = pd.to_datetime(values)
    return np.where(times.isna(), NO_TIME,
                    times.to_numpy("datetime64[ns]").view(np.int64)).astype(np.int64)


def _objects(values: pd.Series) -> np.ndarray:
    """A column as a writable object array, None where missing."""
    return values.astype(object).where(values.notna(), None).to_numpy(dtype=object, copy=True)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
