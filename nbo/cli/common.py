"""What every command shares: the application, its consoles, settings, exit codes, errors,
progress and tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

EXIT_DATA = 3
EXIT_MISSING = 4
EXIT_NOT_PROMOTED = 5  # the champion gate kept the champion
EXIT_POLICY = 6  # the offer policy is invalid

console = Console()
err_console = Console(stderr=True)
app = typer.Typer(
    help="nbo: next-best-offer recommendations with consent and lifecycle rules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(help="Convert public data sets into the nbo data contract.",
                         no_args_is_help=True)
data_app = typer.Typer(help="Check datasets against the data contract.", no_args_is_help=True)
features_app = typer.Typer(help="Build feature snapshots.", no_args_is_help=True)
store_app = typer.Typer(help="The service's store: what it took in, back into datasets.",
                        no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(store_app, name="store")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")


def settings() -> Any:
    from features.settings import Settings

    return Settings()


def fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def store_of(current: Any) -> Any:
    """The service's store for a job, or exit 2 with what to set."""
    from serving.store import open_store

    try:
        return open_store(current)
    except ValueError as exc:  # no key, a short one, or not the store's key
        raise fail(str(exc), 2) from None


@contextmanager
def data_errors() -> Iterator[None]:
    """Turn contract and missing-file errors into a message and a meaningful exit code."""
    from features.contract import ContractError

    try:
        yield
    except ContractError as exc:
        raise fail(str(exc), EXIT_DATA) from None
    except FileNotFoundError as exc:
        raise fail(str(exc), EXIT_MISSING) from None


def check_engine(engine: str, dask_only: dict[str, object]) -> None:
    """--engine is pandas or dask; the options of ``dask_only`` (by flag, as given) need
    dask, and --scheduler and --workers exclude each other."""
    if engine not in ("pandas", "dask"):
        raise typer.BadParameter("use pandas or dask", param_hint="--engine")
    if engine == "pandas" and any(dask_only.values()):
        *first, last = dask_only
        named = f"{', '.join(first)} and {last}" if first else last
        raise typer.BadParameter(f"{named} need --engine dask", param_hint="--engine")
    if dask_only.get("--scheduler") and dask_only.get("--workers"):
        raise typer.BadParameter("give --scheduler or --workers, not both",
                                 param_hint="--workers")


@contextmanager
def dask_cluster(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client for a command (:func:`nbo.jobs.cluster.dask_client`); a scheduler that
    does not answer exits 4 with its address."""
    from nbo.jobs.cluster import SchedulerUnreachable, dask_client

    try:
        with dask_client(scheduler, workers) as client:
            yield client
    except SchedulerUnreachable as exc:
        raise fail(str(exc), EXIT_MISSING) from None


@contextmanager
def steps(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner that shows the current step of a long job."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task(title)
        yield lambda step: progress.update(task, description=f"{title}: {step}")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        overrides[key.strip()] = value.strip()
    return overrides


def feature_config(overrides: list[str]) -> Any:
    from pydantic import ValidationError

    from features.config import FeatureConfig, from_flat, to_flat

    given = parse_overrides(overrides)
    flat = to_flat(FeatureConfig()) | given
    if "price_bands" in given:
        flat["price_bands"] = flat["price_bands"].split(";")
    try:
        return from_flat(FeatureConfig, flat)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None



def print_frame(frame: Any, title: str, floats: str = "{:.4f}") -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*[floats.format(v) if isinstance(v, float) else str(v) for v in row])
    console.print(table)

