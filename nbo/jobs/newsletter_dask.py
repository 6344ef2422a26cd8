"""The newsletter batch on Dask: partitions of customers written on a cluster's workers, each
worker loading the served model once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from features.partitioned import in_order
from nbo.jobs.newsletter import COLUMNS, DTYPES, letters_table, served_holder

if TYPE_CHECKING:
    from features.settings import Settings
    from serving.decision_log import DecisionLog
    from serving.models import ModelHolder
    from serving.store import Store


PLUGIN = "nbo-newsletter"
PER_PARTITION = 20_000


def letters_on_dask(client: Any, settings: Settings, ids: list[str], blocks: tuple[str, ...],
                    moment: datetime, partition_size: int = PER_PARTITION,
                    advance: Callable[[int], None] | None = None, loaded: bool = False
                    ) -> pd.DataFrame:
    """:func:`letters_table` of the served model, its customers in partitions of
    ``partition_size`` written on the workers of the Dask ``client``. Each worker loads the
    served model and opens the store once for the batch (:func:`served_on_workers`; already
    done where ``loaded``) and writes its letters' decisions to the store before it hands a
    partition back. Workers find the model in their own BentoML store (``BENTOML_HOME``) and
    reach the store of ``settings``: one machine's SQLite, or PostgreSQL across machines.
    The table's rows come back in the order of ``ids``."""
    if partition_size < 1:
        raise ValueError(f"a partition holds at least one customer, not {partition_size}")
    with nullcontext() if loaded else served_on_workers(client, settings):
        request_id = uuid.uuid4().hex  # the batch's, as in one process
        parts = [ids[start:start + partition_size]
                 for start in range(0, len(ids), partition_size)]
        futures = [client.submit(_letters_of_partition, part, blocks, moment, request_id,
                                 pure=False) for part in parts]
        tables = in_order(futures, lambda i, _: advance(len(parts[i])) if advance else None)
    return (pd.concat(tables, ignore_index=True) if tables
            else pd.DataFrame(columns=COLUMNS).astype(DTYPES))


@contextmanager
def served_on_workers(client: Any, settings: Settings) -> Iterator[None]:
    """Every worker of ``client`` holds the served model, the store and a decision log
    (:class:`ServedOnWorker`) until the block ends, which closes them."""
    client.register_plugin(ServedOnWorker(settings), name=PLUGIN)
    try:
        yield
    finally:
        client.unregister_worker_plugin(PLUGIN)


class ServedOnWorker(WorkerPlugin):
    """A Dask worker plugin: the served model, the store and a decision log, loaded once in
    each worker for a newsletter batch and closed when the batch unregisters it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.holder: ModelHolder | None = None
        self.store: Store | None = None
        self.log: DecisionLog | None = None

    async def setup(self, worker: Any) -> None:
        # the load checks every customer the model knows, minutes for millions: off the
        # worker's event loop, which must keep answering the scheduler's heartbeats
        await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        from serving.decision_log import DecisionLog
        from serving.store import open_store

        self.store = open_store(self.settings)
        self.holder = served_holder(self.settings, self.store)
        self.log = DecisionLog(self.store, self.settings.decision_log_days,
                               self.settings.current_time)

    async def teardown(self, worker: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.store is not None:
            self.store.close()


def _letters_of_partition(ids: list[str], blocks: tuple[str, ...], moment: datetime,
                          request_id: str) -> pd.DataFrame:
    served = cast(ServedOnWorker, get_worker().plugins[PLUGIN])
    assert served.log is not None and served.holder is not None  # set up before any task
    table = letters_table(served.holder, ids, blocks, moment, log=served.log,
                          request_id=request_id)
    served.log.flush()  # the partition's decisions are stored when it is handed back
    return table
