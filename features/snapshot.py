"""Feature snapshots: validated tables plus features, written as Parquet with a manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from features.columns import Columns as C
from features.config import FeatureConfig, from_flat, to_flat
from features.context import read_into
from features.contract import ContractError, Dataset, load_dataset
from features.history import until
from features.segments import segment_customers
from features.side import customer_features, item_features
from features.state import customer_state
from features.weights import interactions

TABLE_FILES = ("events", "products", "customers", "consents", "feedback")
FEATURE_FILES = ("interactions", "customer_state", "customer_features", "item_features",
                 "segments")
MANIFEST = "manifest.json"


@dataclass
class Features:
    """Everything derived from a history as of one moment."""

    now: pd.Timestamp
    interactions: pd.DataFrame
    customer_state: pd.DataFrame
    customer_features: pd.DataFrame
    item_features: pd.DataFrame
    segments: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in FEATURE_FILES}


def compute_features(
    events: pd.DataFrame,
    products: pd.DataFrame,
    customers: pd.DataFrame,
    now: pd.Timestamp,
    config: FeatureConfig,
    step: Callable[[str], None] | None = None,
    feedback: pd.DataFrame | None = None,
) -> Features:
    """Features as of ``now`` from validated tables; events (and responses to served offers)
    after ``now`` are not used."""
    step = step or (lambda _: None)
    events = until(events, now)
    step("interaction weights")
    weights = interactions(events, now, config.weights, feedback)
    step("customer state")
    state = customer_state(events, customers, products, now, config.lifecycle)
    step("segments")
    segment, profiles = segment_customers(state, events, products, config.segments)
    step("side features")
    return Features(
        now=now,
        interactions=weights,
        customer_state=state,
        customer_features=customer_features(state, segment),
        item_features=item_features(products, config.price_bands),
        segments=profiles,
    )


@dataclass
class Snapshot:
    """A snapshot folder read back: the validated tables, the features and the manifest."""

    path: Path
    manifest: dict[str, Any]
    events: pd.DataFrame
    products: pd.DataFrame
    customers: pd.DataFrame
    consents: pd.DataFrame
    feedback: pd.DataFrame
    features: Features

    @property
    def config(self) -> FeatureConfig:
        return from_flat(FeatureConfig, self.manifest["config"])

    @property
    def now(self) -> pd.Timestamp:
        return self.features.now


def build_snapshot(
    dataset: Path,
    out: Path,
    config: FeatureConfig | None = None,
    now: datetime | None = None,
    max_bad_share: float = 0.05,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Validate ``dataset``, compute features as of ``now`` and write the snapshot to ``out``.

    ``now`` defaults to the last event of the dataset, so a historical data set gets the state
    it had when it ended. The snapshot is built in a folder beside ``out`` and takes its
    place only when complete, so a build that fails or is killed leaves ``out`` as it was.
    A build that fails the bad-share check still shows what was wrong: its quarantined rows
    go to ``out/quarantine`` (``OUT.quarantine`` when ``out`` holds a snapshot).
    """
    config = config or FeatureConfig()
    step = step or (lambda _: None)
    step("validating")
    data = load_dataset(dataset)
    with new_folder(out) as building:
        check_quarantine(data, building, out, max_bad_share)
        moment = pd.Timestamp(now) if now is not None else _last_event(data)
        features = compute_features(data.events, data.products, data.customers, moment,
                                    config, step, feedback=data.feedback)
        step("writing")
        tables = {name: getattr(data, name) for name in TABLE_FILES} | features.tables()
        for name, frame in tables.items():
            frame.to_parquet(building / f"{name}.parquet", index=False)
        manifest = write_manifest(
            building, dataset, moment, data.files.values(), config,
            rows={name: len(frame) for name, frame in tables.items()},
            validation=data.summary(),
            stages=features.customer_state["lifecycle_stage"].value_counts().to_dict(),
            engine="pandas")
    return manifest


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A folder built beside ``out`` that takes its place when the block completes; a block
    that fails or is killed leaves ``out`` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.building-{uuid.uuid4().hex[:8]}")
    building.mkdir()
    try:
        yield building
        replace_folder(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # gone already when it became ``out``


def check_quarantine(data: Dataset, building: Path, out: Path, max_bad_share: float) -> None:
    """Write the quarantined rows into the snapshot being built, then fail above the bad
    share, keeping those rows where the user looks (:func:`keep_quarantine`)."""
    data.write_quarantine(building / "quarantine")
    try:
        data.check_bad_share(max_bad_share)
    except ContractError:
        keep_quarantine(building / "quarantine", out)
        raise


def write_manifest(building: Path, dataset: Path, moment: pd.Timestamp, files: Any,
                   config: FeatureConfig, rows: dict[str, int],
                   validation: dict[str, dict[str, Any]], stages: dict[Any, int], engine: str
                   ) -> dict[str, Any]:
    """Write the snapshot's manifest into the folder being built and return it."""
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "now": moment.isoformat(),
        "dataset": str(dataset.resolve()),
        "fingerprint": fingerprint(files),
        "code_version": code_version(),
        "engine": engine,
        "config": to_flat(config),
        "rows": rows,
        "validation": validation,
        "lifecycle_stages": stages,
    }
    (building / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def replace_folder(built: Path, out: Path) -> None:
    """Put the complete folder ``built`` at ``out`` (beside it, on the same file system):
    a reader finds the old folder, for a moment none, or the new one, never a mix."""
    if not out.exists():
        built.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    built.rename(out)
    shutil.rmtree(old)


def keep_quarantine(quarantine: Path, out: Path) -> None:
    """A failed build's quarantined rows, where its user looks: ``out/quarantine`` when
    ``out`` holds no snapshot, else ``OUT.quarantine`` beside the snapshot it leaves
    untouched."""
    target = out / "quarantine" if not (out / MANIFEST).exists() else \
        out.with_name(f"{out.name}.quarantine")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    quarantine.rename(target)


def load_snapshot(path: Path) -> Snapshot:
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        raise FileNotFoundError(
            f"{path}: not a feature snapshot (no {MANIFEST}); build one with 'nbo features build'."
        )
    manifest = json.loads(manifest_file.read_text())
    tables = {name: read_parquet_table(path / f"{name}.parquet")
              for name in (*TABLE_FILES, *FEATURE_FILES)}
    features = Features(now=pd.Timestamp(manifest["now"]),
                        **{name: tables[name] for name in FEATURE_FILES})
    return Snapshot(path=path, manifest=manifest, features=features,
                    **{name: tables[name] for name in TABLE_FILES})


def read_parquet_table(path: Path) -> pd.DataFrame:
    """A snapshot table: one Parquet file, or a folder of part files (the Dask build writes
    one per partition). Parts are joined in name order; a column that is categorical in
    the parts stays categorical over the union of their categories."""
    if not path.is_dir():
        return pd.read_parquet(path)
    parts = [pd.read_parquet(part) for part in sorted(path.glob("part-*.parquet"))]
    filled = [part for part in parts if len(part)] or parts[:1]
    if len(filled) == 1:
        return filled[0]
    categorical = [c for c in filled[0].columns
                   if isinstance(filled[0][c].dtype, pd.CategoricalDtype)]
    frame = pd.concat(filled, ignore_index=True)
    for column in categorical:
        frame[column] = frame[column].astype("category")
    return frame


def _last_event(data: Dataset) -> pd.Timestamp:
    return pd.Timestamp(data.events[C.timestamp].max())


def fingerprint(files: Any) -> str:
    """SHA-256 over the names and bytes of the dataset's files."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        if path.is_dir():  # a table of parts only: its parts are listed too
            continue
        # a part is named with its table's folder: every table has a part-1
        digest.update((f"{path.parent.name}/{path.name}" if path.name.startswith("part-")
                       else path.name).encode())
        read_into(digest, path)
    return digest.hexdigest()


def code_version() -> str:
    version = metadata.version("nbo")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent, check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{version}+{commit}" if commit else version
