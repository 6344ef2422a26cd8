"""The feature build on Dask: the snapshot of :mod:`features.snapshot`, computed per partition
of customers on a cluster's workers.

Every table keyed by customer (events, customers, feedback) is shuffled on a hash of the
normalised customer id, so one partition holds every row of its customers. The data contract's
rules (duplicates included), the interaction weights and the customer state are then the pandas
functions applied to each partition. Only two results need the whole shop, and they get it in
a few numbers per customer: the moment of the last event, and the segments, whose clustering
runs on the client over each customer's summary and category shares in the order the pandas
build uses, so that both engines find the same clusters. Consents are validated where they are
read, without a shuffle. The catalogue is validated on the client and written into the snapshot
first; the workers read it from there.

Workers read the dataset and write the snapshot themselves: on a real cluster both folders must
be on storage every worker reaches.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.delayed import Delayed, delayed
from distributed import Client, as_completed

from features.columns import Columns as C
from features.config import FeatureConfig
from features.contract import (
    REQUIRED_COLUMNS,
    Dataset,
    TableReport,
    as_id,
    as_text_frame,
    check_columns,
    find_required_table,
    is_text_table,
    part_files,
    read_table,
    read_table_with_parts,
    split_table,
    table_files,
)
from features.history import until
from features.segments import (
    SUMMARY,
    category_shares,
    category_totals,
    cluster_segments,
    leading_categories,
)
from features.side import customer_features, item_features
from features.snapshot import TABLE_FILES, check_quarantine, new_folder, write_manifest
from features.state import customer_state
from features.weights import interactions

ROW = "_nbo_row"  # a raw row's place: its input partition (high bits) and its row in it
HASH = "_nbo_hash"  # hash of the normalised customer id: the key of the shuffle
PARTITION_BITS = 40
BY_CUSTOMER = ("events", "customers", "feedback")
CSV_BLOCK = "64MB"
ORDER = "order"  # per partition: where each customer first appears in the input


@dataclass
class _Table:
    """One table of the dataset as a Dask frame with its rows' places, and its files."""

    frame: dd.DataFrame
    files: dict[str, Path]


def build_snapshot_dask(
    client: Client,
    dataset: Path,
    out: Path,
    config: FeatureConfig | None = None,
    now: datetime | None = None,
    max_bad_share: float = 0.05,
    step: Callable[[str], None] | None = None,
    partitions: int | None = None,
) -> dict[str, Any]:
    """:func:`features.snapshot.build_snapshot` on the cluster of ``client``, in
    ``partitions`` partitions of customers (default: as many as the events are read in, at
    least two per worker). The snapshot's tables keyed by customer are folders of part files;
    :func:`features.snapshot.load_snapshot` reads either form."""
    config = config or FeatureConfig()
    step = step or (lambda _: None)
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise FileNotFoundError(f"{dataset}: no such dataset folder.")
    today = pd.Timestamp.now(tz="UTC").tz_localize(None)
    moment = pd.Timestamp(now) if now is not None else None
    with dask.config.set({"dataframe.convert-string": False}):
        step("validating products")
        products_path = find_required_table(dataset, "products")
        assert products_path is not None  # a required table is found or raises
        products, products_bad = _products(dataset, products_path)
        tables = {name: _read(dataset, name) for name in (*BY_CUSTOMER, "consents")}
        events = tables["events"]
        assert events is not None
        count = partitions or max(events.frame.npartitions,
                                  2 * len(client.scheduler_info()["workers"]))
        with new_folder(out) as building:
            # the workers read the catalogue from the snapshot: a file outlives a worker
            products.to_parquet(building / "products.parquet", index=False)
            summaries = _validate(client, tables, count, today, moment, building, step)
            data = _dataset(client, tables, products_path, products, products_bad, summaries)
            check_quarantine(data, building, out, max_bad_share)
            if moment is None:
                moment = max(s["last_event"] for s in summaries["buckets"] if s["last_event"]
                             is not None)
            built = _features(client, count, moment, config, building, step)
            step("segments")
            stages = _segments(client, built, count, moment, config, building, step)
            step("writing")
            item_features(products, config.price_bands).to_parquet(
                building / "item_features.parquet", index=False)
            built["profiles"].to_parquet(building / "segments.parquet", index=False)
            rows = {name: data.reports[name].kept for name in TABLE_FILES} | {
                "interactions": built["interactions"],
                "customer_state": len(built["summary"]),
                "customer_features": len(built["summary"]),
                "item_features": len(products),
                "segments": len(built["profiles"]),
            }
            manifest = write_manifest(building, dataset, moment, data.files.values(), config, rows,
                                      data.summary(), stages, engine="dask")
    return manifest


# --- reading ------------------------------------------------------------------------------


def _products(dataset: Path, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = read_table_with_parts(dataset, path, "products")
    check_columns(path, "products", frame.columns)
    return split_table(frame, "products")


def _read(dataset: Path, name: str) -> _Table | None:
    """The table with every row's place (:data:`ROW`) and customer hash (:data:`HASH`)."""
    path = find_required_table(dataset, name)
    if path is None:
        return None
    text = is_text_table(path)
    frames = []
    if not path.is_dir():
        if text:
            compressed = path.name.endswith(".gz")
            frames.append(dd.read_csv(
                str(path), dtype=str, keep_default_na=False, na_values=[""],
                blocksize=None if compressed else CSV_BLOCK,
                compression="gzip" if compressed else None))
        else:
            frames.append(dd.read_parquet(str(path), split_row_groups=True))
    parts = part_files(dataset, name)
    if parts:
        appended = dd.read_parquet([str(part) for part in parts], split_row_groups=True)
        frames.append(appended.map_partitions(as_text_frame) if text else appended)
    frame = frames[0] if len(frames) == 1 else dd.concat(frames)
    check_columns(path, name, frame.columns)
    return _Table(frame=frame.map_partitions(_placed),
                  files=table_files(dataset, name, path))


def _placed(frame: pd.DataFrame, partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    number = partition_info["number"] if partition_info else 0
    place = (np.int64(number) << PARTITION_BITS) + np.arange(len(frame), dtype=np.int64)
    return frame.assign(**{ROW: place, HASH: customer_hash(frame[C.customer])})


def customer_hash(ids: pd.Series) -> np.ndarray:
    """A stable 64-bit hash of each normalised customer id (missing ids hash alike)."""
    normal = as_id(ids).astype(object)
    return pd.util.hash_array(normal.where(normal.notna(), "").to_numpy())


# --- validation ---------------------------------------------------------------------------


def _validate(client: Client, tables: dict[str, _Table | None], count: int,
              today: pd.Timestamp, moment: pd.Timestamp | None, building: Path,
              step: Callable[[str], None]) -> dict[str, Any]:
    """Validate every partition on the workers; what each kept is written into ``building``,
    what it set aside comes back with the rows' places."""
    by_bucket = {name: _buckets(tables[name], count) for name in BY_CUSTOMER}
    tasks: list[Delayed] = [
        delayed(_validate_bucket)(i, by_bucket["events"][i], by_bucket["customers"][i],
                                  by_bucket["feedback"][i], today, moment, str(building),
                                  pure=False)
        for i in range(count)
    ]
    consents = tables["consents"]
    consent_parts = consents.frame.to_delayed() if consents is not None else []
    tasks += [delayed(_validate_consents)(i, part, str(building), pure=False)
              for i, part in enumerate(consent_parts)]
    if consents is None:  # the snapshot holds the table, empty
        _validate_consents(0, _absent("consents").assign(**{HASH: np.uint64(0)}),
                           str(building))
    results = _gathered(client.compute(tasks), "validating", step)
    return {"buckets": results[:count], "consents": results[count:]}


def _buckets(table: _Table | None, count: int) -> list[Any]:
    if table is None:
        return [None] * count
    return table.frame.shuffle(on=HASH, npartitions=count).to_delayed()


def _gathered(futures: list[Any], what: str, step: Callable[[str], None]) -> list[Any]:
    """The futures' results in their order, reporting progress as they finish."""
    return in_order(futures, lambda _, done: step(f"{what}: {done}/{len(futures)} partitions"))


def in_order(futures: list[Any], finished: Callable[[int, int], None]) -> list[Any]:
    """The Dask futures' results in their order; ``finished(i, done)`` hears of future ``i``
    as it completes, the ``done``-th to."""
    index = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for done, future in enumerate(as_completed(futures), start=1):
        i = index[future.key]
        results[i] = future.result()
        finished(i, done)
    return results


def _validate_bucket(i: int, events: pd.DataFrame, customers: pd.DataFrame | None,
                     feedback: pd.DataFrame | None, today: pd.Timestamp,
                     moment: pd.Timestamp | None, building: str) -> dict[str, Any]:
    folder = Path(building)
    known = pd.Index(_products_of(folder)[C.product].unique())
    summary: dict[str, Any] = {}
    kept: dict[str, pd.DataFrame] = {}
    for name, raw in (("events", events), ("customers", customers), ("feedback", feedback)):
        frame = (raw.sort_values(ROW, kind="stable").drop(columns=HASH).reset_index(drop=True)
                 if raw is not None else _absent(name))
        good, bad = split_table(frame, name, known, today)
        kept[name] = good
        summary[name] = _report(good, bad)
        write_part(folder, name, i, good.drop(columns=ROW))
    order = _first_seen(kept["events"], kept["customers"], moment)
    write_part(folder, ORDER, i, order)
    times = kept["events"][C.timestamp]
    summary["last_event"] = times.max() if len(times) else None
    return summary


def _absent(name: str) -> pd.DataFrame:
    """A table the dataset lacks: its required columns and the rows' places, no rows (as the
    pandas build validates it)."""
    return pd.DataFrame({**{c: pd.Series(dtype=object) for c in REQUIRED_COLUMNS[name]},
                         ROW: pd.Series(dtype=np.int64)})


def _validate_consents(i: int, raw: pd.DataFrame, building: str) -> dict[str, Any]:
    good, bad = split_table(raw.drop(columns=HASH).reset_index(drop=True), "consents")
    write_part(Path(building), "consents", i, good.drop(columns=ROW))
    return {"consents": _report(good, bad)}


def _report(good: pd.DataFrame, bad: pd.DataFrame) -> dict[str, Any]:
    return {"kept": len(good), "bad": bad.drop(columns=C.source_row)}


def _first_seen(events: pd.DataFrame, customers: pd.DataFrame, moment: pd.Timestamp | None
                ) -> pd.DataFrame:
    """Where each customer of the partition first appears: the pandas build lists customers
    in the customer table's order, then those known only from events in the order of their
    first event (up to ``moment``); (``source``, ``place``) sorts them so on every engine."""
    listed = customers.drop_duplicates(C.customer)
    if moment is not None:
        events = until(events, moment)
    first = events.drop_duplicates(C.customer)
    first = first[~first[C.customer].isin(listed[C.customer])]
    return pd.DataFrame({
        C.customer: np.r_[listed[C.customer].to_numpy(dtype=object),
                          first[C.customer].to_numpy(dtype=object)],
        "source": np.r_[np.zeros(len(listed), np.int8), np.ones(len(first), np.int8)],
        "place": np.r_[listed[ROW].to_numpy(np.int64), first[ROW].to_numpy(np.int64)],
    })


def _dataset(client: Client, tables: dict[str, _Table | None], products_path: Path,
             products: pd.DataFrame, products_bad: pd.DataFrame, summaries: dict[str, Any]
             ) -> Dataset:
    """The validation's reports and quarantine as the pandas build has them: rows set aside
    carry their row number in the whole table (from 1), in that order. Only a table with
    such rows is read again, to count the rows of each partition it was read in."""
    reports = {"products": TableReport.of(str(products_path), len(products), products_bad)}
    quarantine = {"products": products_bad}
    files = table_files(products_path.parent, "products", products_path)
    for name in ("events", "customers", "consents", "feedback"):
        table = tables[name]
        parts = [s[name] for s in summaries["consents" if name == "consents" else "buckets"]]
        bad = [part["bad"] for part in parts if len(part["bad"])]
        rows = (pd.concat(bad, ignore_index=True) if bad else
                pd.DataFrame(columns=[C.reason]))
        if table is not None and len(rows):
            lengths = client.compute(table.frame.map_partitions(len)).result()
            offsets = np.r_[0, np.cumsum(lengths)[:-1]]
            place = rows.pop(ROW).to_numpy(np.int64)
            offset = offsets[place >> PARTITION_BITS]
            rows.insert(0, C.source_row, offset + (place & ((1 << PARTITION_BITS) - 1)) + 1)
            rows = rows.sort_values(C.source_row, kind="stable").reset_index(drop=True)
        reports[name] = TableReport.of(str(table.files[name]) if table else name,
                                       sum(part["kept"] for part in parts), rows)
        quarantine[name] = rows
        if table is not None:
            files |= table.files
    empty = pd.DataFrame()
    return Dataset(events=empty, products=products, customers=empty, consents=empty,
                   feedback=empty, reports=reports, quarantine=quarantine, files=files)


# --- features -----------------------------------------------------------------------------


def _features(client: Client, count: int, now: pd.Timestamp, config: FeatureConfig,
              building: Path, step: Callable[[str], None]) -> dict[str, Any]:
    """Interaction weights and customer state per partition, and what the segments need."""
    futures = [client.submit(_features_bucket, i, str(building), now, config, pure=False)
               for i in range(count)]
    results = _gathered(futures, "weights and state", step)
    summary = pd.concat([r["summary"] for r in results], ignore_index=True)
    summary = summary.sort_values(["source", "place"], kind="stable").reset_index(drop=True)
    shutil.rmtree(building / f".{ORDER}")
    return {
        "summary": summary,
        "totals": pd.concat([r["totals"] for r in results], axis=1).sum(axis=1),
        "interactions": sum(r["interactions"] for r in results),
    }


def _features_bucket(i: int, building: str, now: pd.Timestamp, config: FeatureConfig
                     ) -> dict[str, Any]:
    folder = Path(building)
    products = _products_of(folder)
    events = until(read_part(folder, "events", i), now)
    customers = read_part(folder, "customers", i)
    weights = interactions(events, now, config.weights, read_part(folder, "feedback", i))
    state = customer_state(events, customers, products, now, config.lifecycle)
    write_part(folder, "interactions", i, weights)
    write_part(folder, "customer_state", i, state)
    first = read_part(folder, ORDER, i).set_index(C.customer)
    where = first.reindex(state[C.customer])
    summary = pd.DataFrame({
        "partition": np.full(len(state), i, dtype=np.int32),
        "row": np.arange(len(state), dtype=np.int64),
        "source": where["source"].to_numpy(),
        "place": where["place"].to_numpy(),
        "lifecycle_stage": state["lifecycle_stage"].to_numpy(),
        **{column: state[column].to_numpy() for column in SUMMARY},
    })
    return {"summary": summary, "totals": category_totals(events, products),
            "interactions": len(weights)}


def _segments(client: Client, built: dict[str, Any], count: int, now: pd.Timestamp,
              config: FeatureConfig, building: Path, step: Callable[[str], None]
              ) -> dict[str, int]:
    """Cluster the buyers on the client, send each partition its customers' segments and
    write the customer features; return the customers per lifecycle stage."""
    cfg = config.segments
    summary = built["summary"]
    leading = leading_categories(built["totals"], cfg.n_categories)
    futures = [client.submit(_shares_bucket, i, str(building), now, cfg.n_categories,
                             leading, pure=False)
               for i in range(count)]
    shares = pd.concat(_gathered(futures, "category shares", step), ignore_index=True)
    at = pd.MultiIndex.from_frame(summary[["partition", "row"]]).get_indexer(
        pd.MultiIndex.from_frame(shares[["partition", "row"]]))
    shares = shares.drop(columns=["partition", "row"]).set_axis(at).sort_index()
    segment, profiles = cluster_segments(summary[list(SUMMARY)], shares, cfg)
    built["profiles"] = profiles
    codes, names = pd.factorize(segment.to_numpy())
    summary["segment"] = codes
    per_partition = {i: frame.sort_values("row")["segment"].to_numpy()
                     for i, frame in summary.groupby("partition")}
    written = [client.submit(_customer_features_bucket, i, str(building),
                             per_partition.get(i, np.array([], dtype=np.int64)),
                             np.asarray(names, dtype=object), pure=False)
               for i in range(count)]
    _gathered(written, "customer features", step)
    stages = summary["lifecycle_stage"].value_counts()
    return {str(stage): int(n) for stage, n in stages.items()}


def _shares_bucket(i: int, building: str, now: pd.Timestamp, top: int, leading: list[str]
                   ) -> pd.DataFrame:
    folder = Path(building)
    products = _products_of(folder)
    state = read_part(folder, "customer_state", i)
    buyers = state.index[state["orders"] > 0]
    events = until(read_part(folder, "events", i), now)
    shares = category_shares(events, products, top, leading).reindex(
        state[C.customer].iloc[buyers]).fillna(0)
    return shares.reset_index(drop=True).assign(partition=i, row=buyers.to_numpy())


def _customer_features_bucket(i: int, building: str, codes: np.ndarray, names: np.ndarray
                              ) -> int:
    folder = Path(building)
    state = read_part(folder, "customer_state", i)
    segment = pd.Series(names[codes] if len(codes) else [], index=state[C.customer],
                        dtype=object)
    write_part(folder, "customer_features", i, customer_features(state, segment))
    return len(state)


# --- parts --------------------------------------------------------------------------------


def write_part(building: Path, name: str, i: int, frame: pd.DataFrame) -> None:
    """Partition ``i`` of a table keyed by customer (every partition writes its part, empty
    or not); the order of first appearance is working data, kept beside the snapshot's
    tables and left out of it."""
    folder = building / (f".{name}" if name == ORDER else f"{name}.parquet")
    folder.mkdir(exist_ok=True)
    frame.to_parquet(folder / f"part-{i:05d}.parquet", index=False)


def _products_of(building: Path) -> pd.DataFrame:
    return read_table(building / "products.parquet")


def read_part(building: Path, name: str, i: int) -> pd.DataFrame:
    folder = building / (f".{name}" if name == ORDER else f"{name}.parquet")
    return read_table(folder / f"part-{i:05d}.parquet")
