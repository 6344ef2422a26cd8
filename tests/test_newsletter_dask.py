"""The newsletter batch on Dask writes the letters the single-process batch writes."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from store_backends import ERASURE_KEY
from typer.testing import CliRunner

from features.settings import Settings
from features.snapshot import load_snapshot
from nbo.cli import app
from nbo.jobs.cluster import dask_client
from nbo.jobs.newsletter import letters_table, served_holder
from nbo.jobs.newsletter_dask import PLUGIN, letters_on_dask
from serving.decision_log import DecisionLog
from serving.newsletter import BLOCKS
from serving.store import Store


def mailing_list(snapshot_dir: Path, url: str, now: datetime) -> list[str]:
    """Customers of the shop, two thirds of them with e-mail consent in the store at
    ``url``, and one the shop never saw."""
    ids = [str(c) for c in load_snapshot(snapshot_dir).customers["customer_id"][:150]]
    store = Store(url, ERASURE_KEY)
    for customer in ids[:100]:
        store.set_consents(customer, {"email": (True, True), "personalization": (True, True)},
                           "test", now)
    store.close()
    return [*ids, "nobody-knows"]


def single_process(settings: Settings, ids: list[str], now: datetime) -> pd.DataFrame:
    store = Store(settings.consent_url(), ERASURE_KEY)
    log = DecisionLog(store, settings.decision_log_days, lambda: now, flush_seconds=3600)
    try:
        return letters_table(served_holder(settings, store), ids, BLOCKS, now, log=log)
    finally:
        log.close()
        store.close()


def test_the_dask_newsletter_writes_the_letters_of_one_process(
        service_env: Path, snapshot_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    here, there = (f"sqlite:///{tmp_path / name}" for name in ("here.db", "there.db"))
    ids = mailing_list(snapshot_dir, here, now)
    assert mailing_list(snapshot_dir, there, now) == ids
    monkeypatch.setenv("NBO_CONSENT_DB_URL", here)
    expected = single_process(Settings(), ids, now)
    monkeypatch.setenv("NBO_CONSENT_DB_URL", there)
    done: list[int] = []
    with dask_client(workers=2) as client:  # started here: the workers see BENTOML_HOME
        written = letters_on_dask(client, Settings(), ids, BLOCKS, now, partition_size=40,
                                  advance=done.append)
        assert PLUGIN not in client.run(lambda dask_worker: list(dask_worker.plugins))
    assert sorted(done) == [31, 40, 40, 40]
    assert expected["block"].notna().sum() > 200  # letters with blocks, not only refusals
    pd.testing.assert_frame_equal(written, expected)
    logged = {url: decisions(url) for url in (here, there)}
    assert logged[there]["request_id"].nunique() == 1  # one batch, as in one process
    assert len(logged[there]) == expected["block"].notna().sum()  # a row per offer mailed
    key = ["token", "position"]
    pd.testing.assert_frame_equal(
        logged[there].drop(columns="request_id").sort_values(key).reset_index(drop=True),
        logged[here].drop(columns="request_id").sort_values(key).reset_index(drop=True))


def decisions(url: str) -> pd.DataFrame:
    store = Store(url, ERASURE_KEY)
    try:
        return store.decisions_frame(None, every=True)
    finally:
        store.close()


def test_each_worker_loads_the_model_once_per_batch(service_env: Path, snapshot_dir: Path
                                                    ) -> None:
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    ids = mailing_list(snapshot_dir, Settings().consent_url(), now)
    with dask_client(workers=2) as client:
        client.run(count_model_loads)
        for _ in range(2):  # a batch of 16 partitions, twice
            letters_on_dask(client, Settings(), ids, ("profile",), now, partition_size=10)
        loads = client.run(model_loads)
    assert sorted(loads.values()) == [2, 2]


def test_a_worker_answers_the_scheduler_while_it_loads_the_model(
        service_env: Path, snapshot_dir: Path) -> None:
    """Loading checks every customer the model knows, minutes for millions; a worker whose
    event loop waited for it missed its heartbeats and was restarted, load after load."""
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    ids = mailing_list(snapshot_dir, Settings().consent_url(), now)[:5]
    with dask_client(workers=1) as client:
        client.run(slow_model_loads)
        batch = threading.Thread(target=letters_on_dask,
                                 args=(client, Settings(), ids, ("profile",), now))
        batch.start()
        time.sleep(1.0)  # the worker is loading now
        started = time.perf_counter()
        client.run(lambda: None)  # answered by the worker's event loop
        answered = time.perf_counter() - started
        batch.join()
    assert answered < 1.5


def slow_model_loads() -> None:
    """In a worker: every load of the served model takes 4 s more."""
    from nbo.jobs import newsletter_dask

    load = newsletter_dask.served_holder

    def slow(*args: object) -> object:
        time.sleep(4.0)
        return load(*args)  # type: ignore[arg-type]

    newsletter_dask.served_holder = slow  # type: ignore[assignment]


def count_model_loads() -> None:
    """In a worker: count the served model's loads from here on."""
    from nbo.jobs import newsletter_dask

    load = newsletter_dask.served_holder

    def counted(*args: object) -> object:
        newsletter_dask.loads_counted += 1  # type: ignore[attr-defined]
        return load(*args)  # type: ignore[arg-type]

    newsletter_dask.loads_counted = 0  # type: ignore[attr-defined]
    newsletter_dask.served_holder = counted  # type: ignore[assignment]


def model_loads() -> int:
    from nbo.jobs import newsletter_dask

    return int(newsletter_dask.loads_counted)  # type: ignore[attr-defined]


def test_nbo_newsletter_on_dask_writes_the_file(service_env: Path, snapshot_dir: Path,
                                                tmp_path: Path) -> None:
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    ids = mailing_list(snapshot_dir, Settings().consent_url(), now)
    pd.DataFrame({"customer_id": ids}).to_csv(tmp_path / "people.csv", index=False)
    result = CliRunner().invoke(app, [
        "newsletter", str(tmp_path / "people.csv"), str(tmp_path / "letters.parquet"),
        "--engine", "dask", "--workers", "1", "--partition-size", "50"])
    assert result.exit_code == 0, result.output
    letters = pd.read_parquet(tmp_path / "letters.parquet")
    assert list(dict.fromkeys(letters["customer_id"])) == ids
    mailed = letters.loc[letters["no_mail"].isna(), "customer_id"].nunique()
    assert 0 < mailed < len(ids)
    assert f"{mailed} of {len(ids)} customers get a personalised mail" in " ".join(
        result.output.split())
