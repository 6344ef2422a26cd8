"""The feature build on Dask gives the snapshot the pandas build gives, on a 2-worker cluster.

Equal means: the same manifest (but for when and by which engine it was made), the same rows
in every table, the same quarantined rows with the same row numbers, and floats equal to a
relative 1e-9 (a sum may be taken in another order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.contract import ContractError
from features.generate import ShopSpec, generate_shop
from features.partitioned import build_snapshot_dask
from features.snapshot import FEATURE_FILES, TABLE_FILES, build_snapshot, load_snapshot
from nbo.cli import app
from nbo.jobs.cluster import SchedulerUnreachable, dask_client

RTOL = 1e-9
PAIR_KEYED = {"interactions": ["customer_id", "product_id"],
              "item_features": ["product_id"], "products": ["product_id"],
              "segments": ["segment"]}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_client(workers=2) as client:
        yield client


def sorted_table(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows keyed by customer keep their input order within a customer on both engines."""
    keys = PAIR_KEYED.get(name, ["customer_id"])
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def assert_same_snapshot(pandas_out: Path, dask_out: Path) -> None:
    a, b = load_snapshot(pandas_out), load_snapshot(dask_out)
    made = {"created_at", "engine"}
    assert {k: v for k, v in a.manifest.items() if k not in made} == \
        {k: v for k, v in b.manifest.items() if k not in made}
    assert (a.manifest["engine"], b.manifest["engine"]) == ("pandas", "dask")
    for name in TABLE_FILES:
        pd.testing.assert_frame_equal(sorted_table(getattr(a, name), name),
                                      sorted_table(getattr(b, name), name),
                                      check_categorical=False, rtol=RTOL, obj=name)
    for name in FEATURE_FILES:
        pd.testing.assert_frame_equal(sorted_table(getattr(a.features, name), name),
                                      sorted_table(getattr(b.features, name), name),
                                      check_categorical=False, rtol=RTOL, obj=name)
    assert_same_quarantine(pandas_out / "quarantine", dask_out / "quarantine")


def assert_same_quarantine(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert json.loads((a / "summary.json").read_text()) == \
        json.loads((b / "summary.json").read_text())
    for table in a.glob("*.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(table, dtype=str),
                                      pd.read_csv(b / table.name, dtype=str), obj=table.name)


def spoil(shop: Path, file_format: str) -> None:
    """Bad, duplicated and appended rows of every kind the contract sets aside, some of them
    in Parquet parts beside the tables (as ``nbo store export`` appends them)."""
    read = pd.read_parquet if file_format == "parquet" else pd.read_csv
    events = read(shop / f"events.{file_format}")
    first = events.iloc[0]
    extra = pd.DataFrame([
        {**first.to_dict()},  # the same event again: a duplicate
        {**first.to_dict(), "customer_id": f"  {first['customer_id']} "},  # the same customer
        {**first.to_dict(), "product_id": "no such product"},
        {**first.to_dict(), "customer_id": "walk-in", "event_type": "view"},  # events only
        {**first.to_dict(), "event_type": "teleport"},
    ])
    extra["timestamp"] = pd.to_datetime(extra["timestamp"])
    extra.loc[1, "timestamp"] += pd.Timedelta(hours=1)  # a later event of the padded id
    (shop / "events").mkdir()
    extra.to_parquet(shop / "events" / "part-000000000001-000000000005.parquet", index=False)
    customers = read(shop / f"customers.{file_format}")
    doubled = pd.concat([customers, customers.iloc[[3]], customers.iloc[[5]].assign(
        customer_id="born-1492", birth_year=1492)], ignore_index=True)
    if file_format == "parquet":
        doubled.to_parquet(shop / "customers.parquet", index=False)
    else:
        doubled.to_csv(shop / "customers.csv", index=False)
    ids = customers["customer_id"].astype(str)
    actions = ["click", "conversion", "impression", "dismiss"] * 15 + ["shrug", "click"]
    feedback = pd.DataFrame({  # the last two break the contract
        "customer_id": [*ids[:61], None],
        "product_id": str(first["product_id"]),
        "action": actions,
        "timestamp": pd.Timestamp("2026-06-01") + pd.to_timedelta(range(62), unit="h"),
        "channel": "web",
    })
    (shop / "feedback").mkdir()
    for i, part in enumerate((feedback.iloc[:30], feedback.iloc[30:])):
        part.to_parquet(shop / "feedback" / f"part-{i:012d}.parquet", index=False)


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_the_dask_build_gives_the_pandas_snapshot(client: Any, tmp_path: Path,
                                                  file_format: str) -> None:
    shop = tmp_path / "shop"
    generate_shop(ShopSpec(customers=900, seed=11, file_format=file_format), shop)
    spoil(shop, file_format)
    build_snapshot(shop, tmp_path / "pandas")
    manifest = build_snapshot_dask(client, shop, tmp_path / "dask", partitions=5)
    assert manifest["validation"]["events"]["reasons"] == {
        "duplicate event": 1, "unknown product": 1, "unknown event_type": 1}
    assert manifest["validation"]["customers"]["reasons"] == {
        "duplicate customer_id": 1, "bad birth_year": 1}
    assert manifest["rows"]["feedback"] == 60
    assert (tmp_path / "dask" / "customer_state.parquet").is_dir()
    assert not list((tmp_path / "dask").glob(".*"))  # no working data left in the snapshot
    assert_same_snapshot(tmp_path / "pandas", tmp_path / "dask")


def test_the_dask_build_as_of_an_earlier_moment(client: Any, shop: Path, tmp_path: Path
                                                ) -> None:
    moment = pd.Timestamp("2025-12-31")
    build_snapshot(shop, tmp_path / "pandas", now=moment)
    build_snapshot_dask(client, shop, tmp_path / "dask", now=moment, partitions=3)
    assert_same_snapshot(tmp_path / "pandas", tmp_path / "dask")


def test_the_dask_build_fails_as_the_pandas_one_and_keeps_the_quarantine(
        client: Any, tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    generate_shop(ShopSpec(customers=300, seed=5), shop)
    spoil(shop, "parquet")
    failures = []
    for out, build in ((tmp_path / "pandas", lambda out: build_snapshot(
            shop, out, max_bad_share=0.0001)), (tmp_path / "dask", lambda out:
            build_snapshot_dask(client, shop, out, max_bad_share=0.0001, partitions=2))):
        with pytest.raises(ContractError) as failed:
            build(out)
        failures.append(str(failed.value))
        assert not (out / "manifest.json").exists()
    assert failures[0] == failures[1]
    assert_same_quarantine(tmp_path / "pandas" / "quarantine", tmp_path / "dask" / "quarantine")


def test_nbo_features_build_runs_on_a_running_scheduler(client: Any, shop: Path,
                                                        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "features", "build", str(shop), str(tmp_path / "snap"), "--engine", "dask",
        "--scheduler", client.scheduler.address, "--partitions", "3"])
    assert result.exit_code == 0, result.output
    assert "customer_state" in result.output
    assert load_snapshot(tmp_path / "snap").manifest["engine"] == "dask"


@pytest.mark.parametrize(("options", "complaint"), [
    (["--engine", "spark"], "use pandas or dask"),
    (["--workers", "2"], "need --engine dask"),
    (["--engine", "dask", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
])
def test_nbo_features_build_refuses_options_that_do_not_go_together(
        shop: Path, tmp_path: Path, options: list[str], complaint: str) -> None:
    result = CliRunner().invoke(app, ["features", "build", str(shop), str(tmp_path / "s"),
                                      *options])
    assert result.exit_code == 2
    assert complaint in " ".join(result.output.replace("│", " ").split())


def test_a_local_clusters_workers_run_no_profiler(client: Any) -> None:
    import dask

    # the profiler would sample every thread of a worker each 10 ms for a dashboard nobody
    # opens; the client's own configuration is left as it was
    enabled = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert list(enabled.values()) == [False, False]
    assert dask.config.get("distributed.worker.profile.enabled") is True


def test_an_unreachable_scheduler_is_named_in_the_error() -> None:
    with pytest.raises(SchedulerUnreachable, match=re.escape("tcp://127.0.0.1:9")), \
            dask_client("tcp://127.0.0.1:9", timeout=2):
        pass


@pytest.mark.realdata
def test_the_dask_build_gives_the_pandas_snapshot_of_online_retail(
        client: Any, online_retail_csv: Path, tmp_path: Path) -> None:
    from features.importers import import_online_retail

    import_online_retail(online_retail_csv, tmp_path / "or")
    build_snapshot(tmp_path / "or", tmp_path / "pandas")
    build_snapshot_dask(client, tmp_path / "or", tmp_path / "dask", partitions=4)
    assert_same_snapshot(tmp_path / "pandas", tmp_path / "dask")
