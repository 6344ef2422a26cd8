"""The newsletter batch: every customer of a file, with the model the service serves."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from features.settings import Settings
    from serving.decision_log import DecisionLog
    from serving.engine import Engine
    from serving.store import Store

COLUMNS = ["customer_id", "block", "product_id", "title", "score", "reason", "no_mail"]
AT_ONCE = 1000


class NoServedModel(LookupError):
    """Nothing in BentoML's model store to write letters with."""


def customer_ids(frame: pd.DataFrame) -> list[str]:
    """The distinct, non-blank customer ids of a file's ``customer_id`` column, in order."""
    ids = frame["customer_id"].dropna().astype(str).str.strip()
    return ids[ids != ""].drop_duplicates().tolist()


def served_engine(settings: Settings, store: Store) -> Engine:
    """The newest model of the BentoML store, loaded as the service loads it."""
    import bentoml

    from serving.engine import Engine, PolicySettings
    from serving.models import newest

    try:
        entry = newest(settings.model_tag)
    except bentoml.exceptions.NotFound:
        raise NoServedModel(f"no model {settings.model_tag} in the BentoML store; run "
                            "'nbo promote' first") from None
    return Engine.load(Path(entry.path), str(entry.info.labels.get("mlflow_version", "")),
                       store, PolicySettings.from_settings(settings))


def letters_table(engine: Engine, ids: list[str], blocks: tuple[str, ...], moment: datetime,
                  advance: Callable[[int], None] | None = None,
                  log: DecisionLog | None = None) -> pd.DataFrame:
    """Every customer's blocks as rows (one row with the reason where there is no mail),
    ``AT_ONCE`` customers at a time, each letter in the decision ``log`` where one is given;
    ``advance`` hears how many are done after each part."""
    from serving.decision_log import letter_rows

    rows: list[dict[str, object]] = []
    request_id = uuid.uuid4().hex  # the batch's
    for start in range(0, len(ids), AT_ONCE):
        letters = engine.newsletter(ids[start:start + AT_ONCE], blocks, moment)
        if log is not None:
            log.record(letter_rows(letters, request_id, engine.version,
                                   engine.arbiter.version, "batch", moment))
        for letter in letters:
            if not letter.blocks:
                rows.append({"customer_id": letter.customer_id, "no_mail": letter.no_mail})
            rows.extend({"customer_id": letter.customer_id, **asdict(block), "no_mail": None}
                        for block in letter.blocks)
        if advance is not None:
            advance(len(letters))
    return pd.DataFrame(rows, columns=COLUMNS)
