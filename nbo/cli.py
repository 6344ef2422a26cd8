"""The ``nbo`` command line: thin glue over features, training and serving.

Exit codes: 0 success, 1 unexpected failure, 2 wrong usage, 3 the data breaks the contract,
4 an input file or folder is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from serving.engine import Engine

EXIT_DATA = 3
EXIT_MISSING = 4

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
app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")


def main() -> None:
    import os

    from features.settings import quiet_third_parties

    quiet_third_parties()
    # BentoML's model store lives with the other embedded stores unless told otherwise
    os.environ.setdefault("BENTOML_HOME", str(settings().home.resolve() / "bentoml"))
    app()


def settings() -> Any:
    from features.settings import Settings

    return Settings()


def fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


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


# --- generate -----------------------------------------------------------------------------


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same shop.")] = 42,
    end: Annotated[datetime, typer.Option(help="Date of the last event.")] = datetime(2026, 6, 30),
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Generate a shop in the data contract: customers with hidden tastes, every event type,
    lifecycle spread, coupons, regional, age-restricted and sensitive offers, consent gaps."""
    if file_format not in ("parquet", "csv"):
        raise typer.BadParameter("use parquet or csv", param_hint="--format")
    counts = _generate(out, customers, seed, end, file_format)
    console.print(f"Wrote {out}: " + ", ".join(f"{n:,} {name}" for name, n in counts.items()))


def _generate(out: Path, customers: int, seed: int, end: datetime, file_format: str
              ) -> dict[str, int]:
    from features.generate import ShopSpec, generate_shop

    spec = ShopSpec(customers=customers, seed=seed, end=end, file_format=file_format)
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
) -> None:
    """Validate a dataset and build a feature snapshot: interaction weights, customer state and
    lifecycle, segments and side features, as Parquet with a manifest."""
    config = feature_config(set_ or [])
    manifest = _build_features(dataset, out, config, now, max_bad_share)
    print_snapshot(manifest, out)


def _build_features(dataset: Path, out: Path, config: Any, now: datetime | None,
                    max_bad_share: float | None) -> dict[str, Any]:
    from features.snapshot import build_snapshot

    current = settings()
    limit = max_bad_share if max_bad_share is not None else current.max_bad_share
    with data_errors(), steps("building features") as step:
        return build_snapshot(dataset, out, config, now=now or current.now,
                              max_bad_share=limit, step=step)


def print_snapshot(manifest: dict[str, Any], out: Path) -> None:
    table = Table(title=f"Feature snapshot as of {manifest['now']}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("quarantined", justify="right")
    for name, rows in manifest["rows"].items():
        bad = manifest["validation"].get(name, {}).get("quarantined")
        table.add_row(name, f"{rows:,}", "" if bad is None else f"{bad:,}")
    console.print(table)
    stages = ", ".join(f"{k} {v:,}" for k, v in manifest["lifecycle_stages"].items())
    console.print(f"lifecycle stages: {stages}")
    console.print(f"snapshot: {out} (fingerprint {manifest['fingerprint'][:12]}, code "
                  f"{manifest['code_version']})")


# --- training -----------------------------------------------------------------------------

SnapshotOption = Annotated[Path | None, typer.Option(
    help="Feature snapshot folder; default NBO_HOME/demo/snapshot (made by 'nbo demo').")]
CutoffOption = Annotated[datetime | None, typer.Option(
    help="Train strictly before this time, test after; default the last --test-days.")]
TestDaysOption = Annotated[float, typer.Option(min=1, help="Days of the test window.")]
KOption = Annotated[int, typer.Option(min=1, help="Length of the ranked lists evaluated.")]


def _experiment(snapshot: Path | None, cutoff: datetime | None, test_days: float, k: int
                ) -> Any:
    import pandas as pd

    from training.pipeline import prepare

    path = snapshot or settings().home / "demo" / "snapshot"
    with data_errors(), steps("preparing the split") as _:
        try:
            return prepare(path, pd.Timestamp(cutoff) if cutoff else None, test_days, k)
        except ValueError as exc:
            raise fail(str(exc), EXIT_DATA) from None


def _model_params(kind: str, overrides: list[str]) -> dict[str, Any]:
    from pydantic import ValidationError

    from training.models import MODELS

    if kind not in MODELS:
        raise typer.BadParameter(f"choose one of {', '.join(MODELS)}", param_hint="MODEL")
    params = parse_overrides(overrides)
    try:
        return MODELS[kind].from_params(params).params()
    except ValidationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None


def _tracking() -> Any:
    from training.tracking import use_tracking

    return use_tracking(settings().tracking_uri())


def print_frame(frame: Any, title: str, floats: str = "{:.4f}") -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*[floats.format(v) if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Model: popularity, als, bpr, itemknn, ease, "
                                              "lightfm.")],
    snapshot: SnapshotOption = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Model setting, e.g. --set factors=128.")] = None,
    cutoff: CutoffOption = None,
    test_days: TestDaysOption = 30.0,
    k: KOption = 10,
) -> None:
    """Evaluate a model on a time split, refit it on all data, log it to MLflow and register
    it as the 'challenger' version of nbo-ranker."""
    from training.pipeline import train as run

    params = _model_params(model, set_ or [])
    experiment = _experiment(snapshot, cutoff, test_days, k)
    _tracking()
    with steps("training") as step:
        trained = run(experiment, model, params, report=step)
    print_frame(trained.evaluation[trained.evaluation["group"] == "overall"]
                .drop(columns="group"), f"{model} on split {experiment.key}")
    logged = trained.logged
    assert logged is not None
    console.print(f"fit {trained.fit_seconds:.1f} s; MLflow run {logged.run_id}; "
                  f"registered nbo-ranker version {logged.version} as challenger")


@app.command()
def evaluate(
    models: Annotated[list[str] | None, typer.Argument(help="Models to compare; default all.")
                      ] = None,
    snapshot: SnapshotOption = None,
    cutoff: CutoffOption = None,
    test_days: TestDaysOption = 30.0,
    k: KOption = 10,
    out: Annotated[Path | None, typer.Option(help="Also write the table as CSV.")] = None,
    log: Annotated[bool, typer.Option(
        help="Also log each candidate's evaluation to MLflow (no model is registered).")
                   ] = False,
) -> None:
    """Fit every candidate on the same time split and print their metrics side by side."""
    from training.pipeline import compare_candidates

    for kind in models or []:
        _model_params(kind, [])
    experiment = _experiment(snapshot, cutoff, test_days, k)
    if log:
        _tracking()
    with steps("evaluating") as step:
        table = compare_candidates(experiment, models or None, report=step, log=log)
    for task in ("all", "novel"):
        print_frame(table[table["task"] == task].drop(columns="task"),
                    f"task '{task}' at k={k}, cut-off {experiment.split.cutoff}")
    if out:
        table.to_csv(out, index=False)
        console.print(f"wrote {out}")


@app.command()
def tune(
    model: Annotated[str, typer.Argument(help="Model to tune.")],
    trials: Annotated[int, typer.Option(min=1, help="Trials to run in this process.")] = 20,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL; several workers on one URL share a study. Default "
             "NBO_OPTUNA_STORAGE, else sqlite:///NBO_HOME/optuna.db.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default from model and split.")
                     ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 42,
    folds: Annotated[int, typer.Option(
        min=0, help="Validation windows of --test-days before the cut-off to tune on, the "
                    "objective being their mean (configs chosen on one window carry over "
                    "worse to the next); 0 tunes on the evaluation split itself.")] = 3,
    snapshot: SnapshotOption = None,
    cutoff: CutoffOption = None,
    test_days: TestDaysOption = 30.0,
    k: KOption = 10,
) -> None:
    """Tune a model with Optuna (seeded TPE, default config first, pruning) on validation
    windows before the evaluation split; every trial is an MLflow child run; the best is
    evaluated on the split, refit, logged and registered as challenger."""
    from training.pipeline import validation_folds
    from training.tune import tune as run

    _model_params(model, [])
    experiment = _experiment(snapshot, cutoff, test_days, k)
    try:
        validation = validation_folds(experiment, folds, test_days) if folds else None
    except ValueError as exc:
        raise fail(f"cannot make {folds} validation window(s): {exc}", EXIT_DATA) from None
    current = settings()
    url = storage or current.optuna_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    _tracking()
    with steps(f"tuning {model}") as step:
        result = run(experiment, model, trials, url, study, seed, report=step,
                     validation=validation)
    trials_done = result.study.trials
    pruned = sum(t.state.name == "PRUNED" for t in trials_done)
    console.print(f"{len(trials_done)} trials in study '{result.study.study_name}' "
                  f"({pruned} pruned); best objective {result.best_value:.4f} with "
                  f"{result.best_params}")
    logged = result.trained.logged
    assert logged is not None
    console.print(f"registered nbo-ranker version {logged.version} as challenger "
                  f"(parent run {result.parent_run_id})")


@app.command()
def promote(
    force: Annotated[bool, typer.Option(
        help="Promote even if worse; recorded as a tag on the version.")] = False,
) -> None:
    """Make the challenger the champion if it is at least as good as the current champion on
    the same split (all.ndcg and novel.ndcg); the comparison is printed and logged."""
    from training.tracking import promote as run

    client = _tracking()
    decision = run(client, force=force)
    if len(decision.comparison):
        print_frame(decision.comparison, "challenger vs champion")
    console.print(decision.message)
    if not decision.promoted:
        raise typer.Exit(1)
    console.print(f"published to the BentoML model store as {_publish_champion(client)}; a "
                  "running service switches to it within NBO_RELOAD_SECONDS")


def _publish_champion(client: Any) -> str:
    """Copy the champion (model and serving context) into BentoML's model store."""
    import tempfile

    from serving.models import import_model
    from training.tracking import registered_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder, version = registered_folder(client, into=Path(tmp))
        return import_model(folder, version)


@app.command()
def models() -> None:
    """List the registered versions of nbo-ranker with aliases and gate metrics."""
    from training.tracking import list_versions

    table = list_versions(_tracking())
    if table.empty:
        console.print("no registered versions yet: run 'nbo train MODEL'")
        return
    print_frame(table, "nbo-ranker")


# --- demo ---------------------------------------------------------------------------------


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=50, help="Customers in the generated shop.")
                         ] = 2_000,
    seed: Annotated[int, typer.Option(help="Random seed of the shop.")] = 42,
    port: Annotated[int, typer.Option(help="Port of the demo service.")] = 3000,
    stop: Annotated[bool, typer.Option(help="Only stop a demo service started before.")
                    ] = False,
) -> None:
    """The main job on embedded defaults: generate a shop, validate it, build features,
    compare the candidate models, register the best in MLflow, promote it, and start the
    service with fresh API keys, leaving it running. Files go to NBO_HOME (default .nbo)."""
    import pandas as pd

    home = settings().home
    if stop:
        stopped = stop_demo_service(home.resolve())
        console.print("stopped the demo service" if stopped else "no demo service was running")
        return
    shop, snapshot = home / "demo" / "shop", home / "demo" / "snapshot"
    console.rule("nbo demo")
    counts = _generate(shop, customers, seed, datetime(2026, 6, 30), "parquet")
    console.print(f"1. generated shop in {shop}: "
                  + ", ".join(f"{n:,} {name}" for name, n in counts.items()))
    from features.config import FeatureConfig

    manifest = _build_features(shop, snapshot, FeatureConfig(), None, None)
    console.print("2. validated the shop and built features")
    print_snapshot(manifest, snapshot)
    segments = pd.read_parquet(snapshot / "segments.parquet")
    table = Table(title="Segments")
    for column in ("segment", "customers", "median_orders", "median_value", "top_categories"):
        table.add_column(column)
    for row in segments.itertuples():
        table.add_row(str(row.segment), f"{row.customers:,}", f"{row.median_orders:.0f}",
                      f"{row.median_value:,.0f}", str(row.top_categories))
    console.print(table)
    _demo_models(snapshot)
    _demo_service(snapshot, port)


def _demo_models(snapshot: Path) -> None:
    from training.pipeline import compare_candidates, train
    from training.tracking import promote as run_promotion
    from training.tune import OBJECTIVE

    experiment = _experiment(snapshot, None, 30.0, 10)
    client = _tracking()
    with steps("comparing candidate models") as step:
        table = compare_candidates(experiment, report=step, log=True)
    wide = table.pivot(index="model", columns="task", values="ndcg")
    wide["objective"] = wide[[name.split(".")[0] for name in OBJECTIVE]].mean(axis=1)
    wide["fit_s"] = table.groupby("model")["fit_s"].first()
    wide = wide.sort_values("objective", ascending=False).reset_index()
    console.print("3. compared the candidates on the last 30 days (NDCG@10)")
    print_frame(wide, "candidates")
    best = str(wide["model"].iloc[0])
    with steps(f"training {best}") as step:
        trained = train(experiment, best, report=step)
    logged = trained.logged
    assert logged is not None
    console.print(f"4. registered {best} as nbo-ranker version {logged.version} (MLflow at "
                  f"{settings().tracking_uri()})")
    decision = run_promotion(client)
    console.print(f"5. {decision.message}")
    console.print(f"6. published the champion to BentoML's model store as "
                  f"{_publish_champion(client)}")


def _demo_service(snapshot: Path, port: int) -> None:
    """Start the service in the background with fresh keys and show a ranking from it."""
    import json
    import os
    import secrets

    import httpx

    from features.snapshot import load_snapshot
    from serving import process

    home = settings().home.resolve()
    stop_demo_service(home)
    if not process.port_is_free(port):
        raise fail(f"port {port} is in use (another service?): pass --port", 2)
    keys = {"NBO_API_KEYS": secrets.token_urlsafe(24),
            "NBO_ADMIN_API_KEYS": secrets.token_urlsafe(24)}
    now = load_snapshot(snapshot).now.isoformat()
    env = {**os.environ, **keys, "NBO_NOW": now, "NBO_HOME": str(home)}
    log = home / "serve.log"
    server = process.start(port, env, log)
    (home / "serve.pid").write_text(str(server.pid))
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(server, url, log)
    except RuntimeError as error:
        raise fail(str(error), 1) from None
    customer = _demo_customer(snapshot)
    auth = {"Authorization": f"Bearer {keys['NBO_API_KEYS']}"}
    ranking = httpx.post(f"{url}/rank", json={"customer_id": customer, "k": 5}, headers=auth,
                         timeout=10).json()
    console.print(f"7. the service runs at {url} (pid {server.pid}, log {log}, 'now' "
                  f"pinned to {now}); {customer} is {ranking['lifecycle_stage']}:")
    print_frame(_offers_frame(ranking["offers"]), f"POST /rank for {customer}")
    rank_body = json.dumps({"customer_id": customer, "k": 5})
    letter_body = json.dumps({"customers": [customer]})
    console.print("Try it:", highlight=False)
    for path, body in (("rank", rank_body), ("newsletter", letter_body)):
        console.print(f"  curl -s -X POST {url}/{path} -H 'Authorization: Bearer "
                      f"{keys['NBO_API_KEYS']}' -H 'Content-Type: application/json' "
                      f"-d '{body}'", highlight=False, soft_wrap=True)
    console.print(f"  admin key (PUT /consents/..., DELETE /customers/...): "
                  f"{keys['NBO_ADMIN_API_KEYS']}", highlight=False, soft_wrap=True)
    console.print(f"Stop it with: kill {server.pid}   (or: nbo demo --stop)", highlight=False)


def stop_demo_service(home: Path) -> bool:
    import os
    import signal

    pid_file = home / "serve.pid"
    if not pid_file.exists():
        return False
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        stopped = True
    except (ProcessLookupError, ValueError, PermissionError):
        stopped = False
    pid_file.unlink()
    return stopped


def _demo_customer(snapshot: Path) -> str:
    """A customer with several purchases and e-mail consent: the ranking has something to
    show and the newsletter curl answers with blocks."""
    from features.snapshot import load_snapshot

    snap = load_snapshot(snapshot)
    state = snap.features.customer_state
    consents = snap.consents
    mailable = set(consents.loc[(consents["purpose"] == "email") & consents["granted"]
                                & consents["double_opt_in"], "customer_id"])
    denied = set(consents.loc[(consents["purpose"] == "personalization") & ~consents["granted"],
                              "customer_id"])
    ranked = state[state["lifecycle_stage"] == "active"].sort_values("orders", ascending=False)
    for customer in ranked["customer_id"]:
        if customer in mailable and customer not in denied:
            return str(customer)
    return str(ranked["customer_id"].iloc[0])


def _offers_frame(offers: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(offers, columns=["rank", "product_id", "title", "score", "reason"])


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start the ranking service (bentoml serve serving.service:NboService) in the
    foreground; it needs NBO_API_KEYS and NBO_ADMIN_API_KEYS and a promoted model."""
    import os
    import sys

    from serving.process import SERVICE

    current = settings()
    if not current.api_keys.strip() or not current.admin_api_keys.strip():
        raise fail("set NBO_API_KEYS and NBO_ADMIN_API_KEYS (comma-separated keys) first", 2)
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve",
                              SERVICE, "--port", str(port), "--host", host])


@app.command()
def build(
    export: Annotated[Path | None, typer.Option(
        help="Also write the Bento, model included, to this file (e.g. nbo.bento); "
             "'bentoml import FILE' restores it on another machine.")] = None,
) -> None:
    """Package the service with the promoted champion into a Bento (bentoml build from
    bentofile.yaml); serve it with 'bentoml serve nbo:latest'."""
    from serving.models import build_bento

    try:
        built = build_bento(Path(__file__).resolve().parents[1], settings().model_tag, export)
    except (FileNotFoundError, LookupError) as error:
        raise fail(str(error), 2) from None
    console.print(f"built Bento {built.bento} with model {', '.join(built.models)}")
    if built.exported:
        console.print(f"exported to {built.exported}")


@app.command()
def newsletter(
    customers: Annotated[Path, typer.Argument(help="Parquet or CSV file with a customer_id "
                                                   "column.")],
    out: Annotated[Path, typer.Argument(help="File to write (.parquet or .csv).")],
    blocks: Annotated[str, typer.Option(help="Comma-separated blocks, in order.")
                      ] = "profile,lifecycle,last_visit,regional",
    now: Annotated[datetime | None, typer.Option(help="Moment of the mailing; default: now "
                                                      "(or NBO_NOW).")] = None,
) -> None:
    """Write the newsletter blocks of every customer of a file for an e-mail tool: one row per
    block, or one row with the reason a customer gets no personalised mail."""
    import bentoml
    import pandas as pd

    from serving.engine import BLOCKS, Engine, PolicySettings
    from serving.models import newest
    from serving.store import Store

    if not customers.exists():
        raise fail(f"{customers} does not exist", EXIT_MISSING)
    frame = (pd.read_parquet(customers) if customers.suffix == ".parquet"
             else pd.read_csv(customers, dtype=str))
    if "customer_id" not in frame:
        raise fail(f"{customers} has no customer_id column (columns: {list(frame.columns)})",
                   EXIT_DATA)
    if out.suffix not in (".parquet", ".csv"):
        raise fail(f"{out}: write .parquet or .csv", 2)
    chosen = tuple(b.strip() for b in blocks.split(",") if b.strip())
    unknown = [b for b in chosen if b not in BLOCKS]
    if unknown or not chosen:
        raise fail(f"unknown block(s) {unknown}; choose from {', '.join(BLOCKS)}", 2)
    current = settings()
    try:
        entry = newest(current.model_tag)
    except bentoml.exceptions.NotFound:
        raise fail(f"no model {current.model_tag} in the BentoML store; run 'nbo promote' "
                   "first", EXIT_MISSING) from None
    store = Store(current.consent_url())
    try:
        engine = Engine.load(Path(entry.path), str(entry.info.labels.get("mlflow_version", "")),
                             store, PolicySettings.from_settings(current))
        ids = frame["customer_id"].dropna().astype(str).str.strip()
        table = _letters(engine, ids[ids != ""].drop_duplicates().tolist(), chosen,
                         now or current.current_time())
    finally:
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False) if out.suffix == ".parquet" else table.to_csv(out,
                                                                                    index=False)
    mailed = table.loc[table["no_mail"].isna(), "customer_id"].nunique()
    total = table["customer_id"].nunique()
    console.print(f"wrote {out}: {mailed:,} of {total:,} customers get a personalised mail "
                  f"(model version {engine.version})")


def _letters(engine: Engine, ids: list[str], blocks: tuple[str, ...], moment: datetime
             ) -> Any:
    """Every customer's blocks as rows, 1,000 customers at a time, with a progress bar."""
    import pandas as pd
    from rich.progress import MofNCompleteColumn

    rows: list[dict[str, Any]] = []
    with Progress(TextColumn("newsletter"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("customers", total=len(ids))
        for start in range(0, len(ids), 1000):
            letters = engine.newsletter(ids[start:start + 1000], blocks, moment)
            for letter in letters:
                if not letter.blocks:
                    rows.append({"customer_id": letter.customer_id, "no_mail": letter.no_mail})
                rows.extend({"customer_id": letter.customer_id, **asdict(block), "no_mail": None}
                            for block in letter.blocks)
            progress.advance(task, len(letters))
    return pd.DataFrame(rows, columns=["customer_id", "block", "product_id", "title", "score",
                                       "reason", "no_mail"])


if __name__ == "__main__":
    main()
