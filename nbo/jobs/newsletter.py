"""The newsletter batch: every customer of a file, with the model the service serves."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from features.settings import Settings
    from serving.decision_log import DecisionLog
    from serving.engine import Engine
    from serving.models import ModelHolder
    from serving.store import Store

COLUMNS = ["customer_id", "block", "product_id", "title", "score", "reason", "no_mail"]
DTYPES = {column: "float64" if column == "score" else "str" for column in COLUMNS}
AT_ONCE = 1000


class NoServedModel(LookupError):
    """Nothing in BentoML's model store to write letters with."""


def customer_ids(frame: pd.DataFrame) -> list[str]:
    """The distinct, non-blank customer ids of a file's ``customer_id`` column, in order."""
    ids = frame["customer_id"].dropna().astype(str).str.strip()
    return ids[ids != ""].drop_duplicates().tolist()


def served_holder(settings: Settings, store: Store) -> ModelHolder:
    """The newest model of the BentoML store and the store's running experiment, loaded as
    the service loads them."""
    from serving.engine import PolicySettings
    from serving.models import ModelHolder

    holder = ModelHolder(settings.model_tag, store, PolicySettings.from_settings(settings),
                         settings.allow_other_dataset)
    holder.sync_policy()
    said = holder.refresh()
    if holder.engine is None:
        raise NoServedModel(said)
    holder.sync_experiment()
    return holder


def letters_table(served: Engine | ModelHolder, ids: list[str], blocks: tuple[str, ...],
                  moment: datetime, advance: Callable[[int], None] | None = None,
                  log: DecisionLog | None = None, request_id: str | None = None
                  ) -> pd.DataFrame:
    """Every customer's blocks as rows (one row with the reason where there is no mail),
    ``AT_ONCE`` customers at a time, each letter in the decision ``log`` where one is given
    under the batch's ``request_id`` (default: a new one); a holder writes each customer's
    letter with the engine of their experiment arm. ``advance`` hears how many are done
    after each part."""
    from serving.decision_log import letter_rows
    from serving.models import ModelHolder

    rows: list[dict[str, object]] = []
    request_id = request_id or uuid.uuid4().hex
    champion = served.engine if isinstance(served, ModelHolder) else served
    if champion is None:
        raise NoServedModel("the holder serves no model yet")
    for start in range(0, len(ids), AT_ONCE):
        part = ids[start:start + AT_ONCE]
        if isinstance(served, ModelHolder):
            letters, assigned, versions = served.letters(part, blocks, moment)
        else:
            letters, assigned, versions = served.newsletter(part, blocks, moment), {}, {}
        if log is not None:
            log.record(letter_rows(letters, request_id, champion.version,
                                   champion.arbiter.version, "batch", moment, assigned,
                                   versions))
        for letter in letters:
            if not letter.blocks:
                rows.append({"customer_id": letter.customer_id, "no_mail": letter.no_mail})
            rows.extend({"customer_id": letter.customer_id, **vars(block), "no_mail": None}
                        for block in letter.blocks)  # vars: asdict's deep copy took a sixth
        if advance is not None:
            advance(len(letters))
    return pd.DataFrame(rows, columns=COLUMNS).astype(DTYPES)  # alike however many parts

