"""Data commands: generate a shop, import Online Retail, validate a dataset, build features."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nbo.cli.common import (
    app,
    check_engine,
    console,
    dask_cluster,
    data_app,
    data_errors,
    err_console,
    feature_config,
    features_app,
    import_app,
    settings,
    steps,
)

# --- generate -----------------------------------------------------------------------------


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same shop.")] = 42,
    end: Annotated[datetime, typer.Option(help="Date of the last event.")] = datetime(2026, 6, 30),
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    ratings_only: Annotated[bool, typer.Option(
        "--ratings-only", help="Record only ratings (1-5) of what the customers took, as a "
        "review site knows them; no purchases, views or carts.")] = False,
) -> None:
    """Generate a shop in the data contract: customers with hidden tastes, every event type,
    lifecycle spread, coupons, regional, age-restricted and sensitive offers, consent gaps."""
    if file_format not in ("parquet", "csv"):
        raise typer.BadParameter("use parquet or csv", param_hint="--format")
    counts = generate_shop(out, customers, seed, end, file_format, ratings_only)
    console.print(f"Wrote {out}: " + ", ".join(f"{n:,} {name}" for name, n in counts.items()))


def generate_shop(out: Path, customers: int, seed: int, end: datetime, file_format: str,
                  ratings_only: bool = False) -> dict[str, int]:
    from features.generate import ShopSpec, generate_shop

    spec = ShopSpec(customers=customers, seed=seed, end=end, file_format=file_format,
                    ratings_only=ratings_only)
    with Progress(TextColumn("generating shop"), BarColumn(), TextColumn("{task.completed:,}"
                  "/{task.total:,} customers"), TimeElapsedColumn(), console=err_console,
                  transient=True) as progress:
        task = progress.add_task("generate", total=customers)
        return generate_shop(spec, out, progress=lambda n: progress.advance(task, n))


# --- import -------------------------------------------------------------------------------


@import_app.command("online-retail")
def import_online_retail(
    path: Annotated[Path, typer.Argument(help="The UCI Online Retail CSV file.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
) -> None:
    """Convert the UCI Online Retail file: purchases, returns from cancelled invoices, fees left
    out of the catalogue, anonymous rows counted but kept out of customer histories."""
    from features.importers import import_online_retail as run

    with data_errors(), steps("importing") as _:
        report = run(path, out)
    for line in report.lines():
        console.print(line, highlight=False)
    console.print(f"Wrote {out}")


# --- data validate ------------------------------------------------------------------------


@data_app.command("validate")
def validate(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (events, products, ...).")],
    quarantine: Annotated[Path | None, typer.Option(
        help="Where to write quarantined rows; default DATASET/quarantine.")] = None,
    max_bad_share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Fail above this share of bad rows; default NBO_MAX_BAD_SHARE.")
    ] = None,
) -> None:
    """Validate a dataset against the data contract and quarantine the rows that break it."""
    from features.contract import load_dataset

    limit = max_bad_share if max_bad_share is not None else settings().max_bad_share
    with data_errors():
        with steps("validating"):
            data = load_dataset(dataset)
        written = data.write_quarantine(quarantine or dataset / "quarantine")
        print_validation(data.reports)
        for path in written:
            console.print(f"quarantined rows: {path}")
        console.print(f"rows per reason: {(quarantine or dataset / 'quarantine') / 'summary.json'}")
        data.check_bad_share(limit)
    console.print("[green]valid[/]: every table is within the bad-row limit "
                  f"({limit:.1%}).")


def print_validation(reports: dict[str, Any]) -> None:
    table = Table(title="Validation")
    for column in ("table", "read", "kept", "quarantined", "reasons"):
        table.add_column(column, justify="right" if column in {"read", "kept",
                                                               "quarantined"} else "left")
    for name, r in reports.items():
        reasons = "; ".join(f"{k}: {v:,}" for k, v in r.reasons.items())
        table.add_row(name, f"{r.read:,}", f"{r.kept:,}", f"{r.quarantined:,}", reasons)
    console.print(table)


# --- features build -----------------------------------------------------------------------


@features_app.command("build")
def features_build(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Argument(help="Snapshot folder to write.")],
    now: Annotated[datetime | None, typer.Option(
        help="Compute state as of this time; default NBO_NOW, else the last event.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a feature setting, e.g. --set weights.half_life_days=90.")
    ] = None,
    max_bad_share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Fail above this share of bad rows; default NBO_MAX_BAD_SHARE.")
    ] = None,
    engine: Annotated[str, typer.Option(
        help="pandas (one process) or dask (partitions of customers on a Dask cluster).")
    ] = "pandas",
    scheduler: Annotated[str | None, typer.Option(
        help="Dask engine: address of a running scheduler, e.g. tcp://host:8786.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Dask engine without --scheduler: local worker processes; default: cores.")
    ] = None,
    partitions: Annotated[int | None, typer.Option(
        min=1, help="Dask engine: partitions of customers; default: as many as the events "
        "are read in, at least two per worker.")] = None,
) -> None:
    """Validate a dataset and build a feature snapshot: interaction weights, customer state and
    lifecycle, segments and side features, as Parquet with a manifest. With --engine dask the
    same snapshot is computed per partition of customers on a Dask cluster (a local one unless
    --scheduler names one), and its tables keyed by customer are folders of part files."""
    check_engine(engine, {"--scheduler": scheduler, "--workers": workers,
                          "--partitions": partitions})
    config = feature_config(set_ or [])
    cluster = {"scheduler": scheduler, "workers": workers, "partitions": partitions} \
        if engine == "dask" else None
    manifest = build_features(dataset, out, config, now, max_bad_share, cluster)
    print_snapshot(manifest, out)


def build_features(dataset: Path, out: Path, config: Any, now: datetime | None,
                   max_bad_share: float | None, cluster: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Build the snapshot in this process, or on Dask where ``cluster`` says how
    (``scheduler``, ``workers``, ``partitions``)."""
    from features.snapshot import build_snapshot

    current = settings()
    limit = max_bad_share if max_bad_share is not None else current.max_bad_share
    with data_errors(), steps("building features") as step:
        if cluster is None:
            return build_snapshot(dataset, out, config, now=now or current.now,
                                  max_bad_share=limit, step=step)
        from features.partitioned import build_snapshot_dask

        step("starting the Dask client")
        with dask_cluster(cluster["scheduler"], cluster["workers"]) as client:
            return build_snapshot_dask(client, dataset, out, config, now=now or current.now,
                                       max_bad_share=limit, step=step,
                                       partitions=cluster["partitions"])


def print_snapshot(manifest: dict[str, Any], out: Path) -> None:
    table = Table(title=f"Feature snapshot as of {manifest['now']}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("quarantined", justify="right")
    table.add_column("reasons")
    for name, rows in manifest["rows"].items():
        report = manifest["validation"].get(name, {})
        bad = report.get("quarantined")
        reasons = "; ".join(f"{k}: {v:,}" for k, v in report.get("reasons", {}).items())
        table.add_row(name, f"{rows:,}", "" if bad is None else f"{bad:,}", reasons)
    console.print(table)
    stages = ", ".join(f"{k} {v:,}" for k, v in manifest["lifecycle_stages"].items())
    console.print(f"lifecycle stages: {stages}")
    console.print(f"snapshot: {out} (fingerprint {manifest['fingerprint'][:12]}, code "
                  f"{manifest['code_version']})")


