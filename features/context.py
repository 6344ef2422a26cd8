"""What serving needs besides the model, as of a snapshot's moment: the offer table, customer
profiles with the inputs of the lifecycle stage, what each customer bought (and when),
returned and last looked at, and the consents the consent store starts from.

Written next to the model in its artifact, so a registered model carries everything the
request-time policy reads and a Bento built from it is self-contained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Columns as C
from features.columns import EventType as E
from features.config import FeatureConfig, from_flat, to_flat
from features.history import until

BIRTHDAY = "birthday"  # month * 100 + day of the birth date: serving needs no year

CUSTOMER_COLUMNS = [C.customer, C.region, C.birth_year, BIRTHDAY, "first_purchase",
                    "last_purchase", "usual_gap_days", "segment"]
TABLES = ("offers", "customers", "bought", "returned", "last_visit", "consents")
DATASET_FILE = "dataset.json"  # in a model's folder, beside its context: what it learnt from


def serving_context(
    events: pd.DataFrame,
    products: pd.DataFrame,
    customers: pd.DataFrame,
    consents: pd.DataFrame,
    state: pd.DataFrame,
    customer_features: pd.DataFrame,
    now: pd.Timestamp,
) -> dict[str, pd.DataFrame]:
    """The serving tables as of ``now``; nothing after ``now`` is read."""
    events = until(events, now)
    profile = state[[C.customer, C.region, "first_purchase", "last_purchase",
                     "usual_gap_days"]].copy()
    birth = customers.set_index(C.customer)[C.birth_year] if C.birth_year in customers else None
    profile[C.birth_year] = (birth.reindex(profile[C.customer]).to_numpy(dtype=float)
                             if birth is not None else np.nan)
    born = (pd.to_datetime(customers.set_index(C.customer)[C.birth_date])
            if C.birth_date in customers else None)
    profile[BIRTHDAY] = ((born.dt.month * 100 + born.dt.day).reindex(profile[C.customer])
                         .to_numpy(dtype=float) if born is not None else np.nan)
    segment = customer_features.set_index(C.customer)["segment"]
    profile["segment"] = segment.reindex(profile[C.customer]).to_numpy()
    purchases = events[events[C.event_type] == E.purchase]
    bought = (purchases.groupby([C.customer, C.product], observed=True)[C.timestamp].max()
              .rename("last_purchase").reset_index())
    returned = (events.loc[events[C.event_type] == E.return_, [C.customer, C.product]]
                .drop_duplicates())
    visits = state[[C.customer, "last_visit_items"]].explode("last_visit_items").dropna()
    last_visit = visits.rename(columns={"last_visit_items": C.product})
    last_visit["position"] = last_visit.groupby(C.customer).cumcount()
    return {
        "offers": products.reset_index(drop=True),
        "customers": profile[CUSTOMER_COLUMNS].reset_index(drop=True),
        "bought": bought,
        "returned": returned.reset_index(drop=True),
        "last_visit": last_visit.reset_index(drop=True),
        "consents": consents.reset_index(drop=True),
    }


def write_context(tables: dict[str, pd.DataFrame], config: FeatureConfig, now: pd.Timestamp,
                  folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        tables[name].to_parquet(folder / f"{name}.parquet", index=False)
    meta = {"now": now.isoformat(), "config": to_flat(config)}
    (folder / "context.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_context(folder: Path) -> tuple[dict[str, pd.DataFrame], FeatureConfig, pd.Timestamp]:
    meta_file = folder / "context.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{folder}: no serving context (context.json) in this model; "
                                "retrain it with this version of nbo")
    meta: dict[str, Any] = json.loads(meta_file.read_text())
    tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}
    return tables, from_flat(FeatureConfig, meta["config"]), pd.Timestamp(meta["now"])


def read_into(digest: Any, path: Path) -> Any:
    """Feed a file's bytes to a hashlib digest, a megabyte at a time; the digest (shared by
    the dataset fingerprint and the model store's file digests)."""
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest
