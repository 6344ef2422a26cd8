"""The store's events and feedback into a dataset folder, so the next feature build and
training learn from what happened while the service ran.

Each export appends what the store took in since the last export to that dataset as new part
files (``events/part-*.parquet``, ``feedback/part-*.parquet``) in the data contract's columns.
A part is named by the store rows it holds, so an export cut short and run again rewrites the
same part rather than adding a second one; a bookmark per dataset in the store says how far
the exports have read. Erased customers are never written (the store deletes their rows when
they are erased; rows read before that are checked against the erasures once more).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.columns import Columns as C
from features.contract import EVENT_KEY, find_table
from serving.store import Store

FEEDBACK_COLUMNS = [C.customer, C.product, C.action, C.channel, C.request_id, C.position,
                    C.model_version, C.timestamp]


@dataclass(frozen=True)
class Exported:
    events: int  # rows written
    feedback: int
    repeated: int  # events alike in every contract column to another one, written once
    erased: int  # rows of customers erased after the store handed them out, not written
    files: list[Path]


def export_store(store: Store, dataset: Path) -> Exported:
    """Append the store's new events and feedback to ``dataset`` (a contract folder with its
    events and products tables)."""
    if find_table(dataset, "events") is None or find_table(dataset, "products") is None:
        raise FileNotFoundError(f"{dataset}: not a dataset folder (no events or products "
                                "table); export into the folder the model was trained from")
    key = f"export:{dataset.resolve()}"
    after_event = store.bookmark(f"{key}:events")
    events, last_event = store.events_frame(after_event)
    feedback = store.feedback_frame(store.bookmark(f"{key}:feedback"))
    last_feedback = int(feedback["id"].max()) if len(feedback) else None
    gone = store.erased_among([*events[C.customer], *feedback[C.customer]], returned_too=False)
    erased = int(events[C.customer].isin(gone).sum() + feedback[C.customer].isin(gone).sum())
    events = events[~events[C.customer].isin(gone)]
    feedback = feedback[~feedback[C.customer].isin(gone)]
    before = len(events)
    # the contract reads rows alike in every column as one loaded twice; here they are
    # distinct events of one moment (the service told them apart by id), counted once
    events = events.drop_duplicates(list(EVENT_KEY))
    files = []
    if len(events):
        files.append(_write(events.reset_index(drop=True), dataset / "events",
                            f"part-{after_event + 1:012d}-{last_event:012d}.parquet"))
    if len(feedback):
        first = int(feedback["id"].min())
        files.append(_write(feedback[FEEDBACK_COLUMNS].reset_index(drop=True),
                            dataset / "feedback",
                            f"part-{first:012d}-{last_feedback:012d}.parquet"))
    # the bookmarks move only once the parts are on disk
    store.set_bookmark(f"{key}:events", last_event)
    if last_feedback is not None:
        store.set_bookmark(f"{key}:feedback", last_feedback)
    return Exported(len(events), len(feedback), before - len(events), erased, files)


def _write(frame: pd.DataFrame, folder: Path, name: str) -> Path:
    """Write a part whole or not at all: a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    partial = folder / f".{name}.partial"
    frame.to_parquet(partial, index=False)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    partial.replace(path)
    return path
