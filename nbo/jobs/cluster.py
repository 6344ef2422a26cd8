"""A Dask client for the jobs that run past one process: of a running scheduler, or of a
local cluster of worker processes that lives as long as the job."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CONNECT_SECONDS = 20


class SchedulerUnreachable(ConnectionError):
    """No Dask scheduler answers at the address given."""


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                timeout: float = CONNECT_SECONDS) -> Iterator[Any]:
    """A client of the scheduler at ``scheduler`` (``tcp://host:8786``), else of a local
    cluster of ``workers`` processes (default: one per core) with one thread each; the
    feature code is pandas and numpy, so processes, not threads, use the cores."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler and workers:
        raise ValueError("give a scheduler address or a number of local workers, not both")
    if workers is not None and workers < 1:
        raise ValueError(f"a local cluster needs at least one worker, not {workers}")
    # the shuffle logs every start and end at WARNING: progress is the job's to report
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except OSError as exc:
            raise SchedulerUnreachable(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); start one with "
                "'dask scheduler' and its workers with 'dask worker ADDRESS', or leave "
                "--scheduler out for a local cluster") from exc
        with client:
            yield client
        return
    # no dashboard, so no worker profiler: it samples every thread's stack each 10 ms on the
    # worker's event loop (about 10 us of a core per newsletter letter)
    with dask.config.set({"distributed.worker.profile.enabled": False}):  # the workers'
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        yield client
