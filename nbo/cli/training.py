"""Training commands: evaluate, train, tune, promote and list the registered models."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nbo.cli.common import (
    EXIT_DATA,
    EXIT_MISSING,
    EXIT_NOT_PROMOTED,
    app,
    console,
    data_errors,
    err_console,
    fail,
    parse_overrides,
    print_frame,
    settings,
    steps,
    store_app,
    store_of,
)

# --- training -----------------------------------------------------------------------------

# the names of training.models.MODELS, for help texts without importing every model (a test
# keeps the two equal)
MODEL_KINDS = ("popularity", "als", "bpr", "itemknn", "follows", "ease", "lightfm", "blend")
models_app = typer.Typer(help="Registered models and model settings.")
app.add_typer(models_app, name="models")

SnapshotOption = Annotated[Path | None, typer.Option(
    help="Feature snapshot folder; default NBO_HOME/snapshot (the demo's, with "
         "NBO_HOME=.nbo/demo).")]
CutoffOption = Annotated[datetime | None, typer.Option(
    help="Train strictly before this time, test after; default the last --test-days.")]
TestDaysOption = Annotated[float, typer.Option(min=1, help="Days of the test window.")]
KOption = Annotated[int, typer.Option(min=1, help="Length of the ranked lists evaluated.")]


def experiment_of(snapshot: Path | None, cutoff: datetime | None, test_days: float, k: int
                ) -> Any:
    import pandas as pd

    from training.pipeline import prepare

    home = settings().home
    path = snapshot or home / "snapshot"
    if snapshot is None and not path.exists():
        raise fail(f"no snapshot at {path}: pass --snapshot, or set NBO_HOME={home / 'demo'} "
                   "to work in the demo's workspace", EXIT_MISSING)
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


def tracking() -> Any:
    from training.tracking import use_tracking

    return use_tracking(settings().tracking_uri())



@app.command()
def train(
    model: Annotated[str, typer.Argument(help=f"Model: {', '.join(MODEL_KINDS)}.")],
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
    experiment = experiment_of(snapshot, cutoff, test_days, k)
    tracking()
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
    experiment = experiment_of(snapshot, cutoff, test_days, k)
    if log:
        tracking()
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
    model: Annotated[str, typer.Argument(help=f"Model to tune: {', '.join(MODEL_KINDS)}.")],
    trials: Annotated[int, typer.Option(min=1, help="Trials to run in this process.")] = 20,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL; several workers on one URL share a study. Default "
             "NBO_OPTUNA_STORAGE, else sqlite:///NBO_HOME/optuna.db.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default from model and split.")
                     ] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the TPE sampler; default a fresh one per worker (printed and logged), "
             "so workers of one study never sample the same trials.")] = None,
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
    windows before the evaluation split, maximising the geometric mean of NDCG@10 on 'all'
    and 'novel'; every trial is an MLflow child run; the best is evaluated on the split,
    refit, logged and registered as challenger."""
    from training.pipeline import validation_folds
    from training.tune import StudyWorkers
    from training.tune import tune as run

    _model_params(model, [])
    current = settings()
    url = storage or current.optuna_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # a named study's workers sign in before loading anything: a worker slow to start must
    # not find the study's others all gone and register a second challenger
    joined = StudyWorkers(url, study) if study else None
    if joined is not None:
        joined.join()
    try:
        experiment = experiment_of(snapshot, cutoff, test_days, k)
        try:
            validation = validation_folds(experiment, folds, test_days) if folds else None
        except ValueError as exc:
            raise fail(f"cannot make {folds} validation window(s): {exc}", EXIT_DATA
                       ) from None
        tracking()
        with steps(f"tuning {model}") as step:
            result = run(experiment, model, trials, url, study, seed, report=step,
                         validation=validation, workers=joined)
    except BaseException:
        if joined is not None:  # tune() leaves once it has sampled; a failure before, here
            joined.leave()
            joined.close()
        raise
    trials_done = result.study.trials
    pruned = sum(t.state.name == "PRUNED" for t in trials_done)
    console.print(f"{len(trials_done)} trials in study '{result.study.study_name}' "
                  f"({pruned} pruned); best objective {result.best_value:.4f} with "
                  f"{result.best_params}")
    console.print(f"sampler seed {result.seed}")
    if result.trained is None:
        console.print("not registered here: another worker of the study registers its best "
                      "when the last trial ends (or has registered it already)")
        return
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
    from nbo.jobs.champion import publish_champion
    from training.tracking import promote as run

    client = tracking()
    decision = run(client, force=force)
    if len(decision.comparison):
        print_frame(decision.comparison, "challenger vs champion")
    console.print(decision.message)
    if not decision.promoted:
        raise typer.Exit(EXIT_NOT_PROMOTED)
    console.print(f"published to the BentoML model store as {publish_champion(client)}; a "
                  "running service switches to it within NBO_RELOAD_SECONDS")


@models_app.callback(invoke_without_command=True)
def models(context: typer.Context) -> None:
    """List the registered versions of nbo-ranker with aliases and gate metrics ('nbo
    models params MODEL': a model's settings)."""
    if context.invoked_subcommand is not None:
        return
    from training.tracking import list_versions

    table = list_versions(tracking())
    if table.empty:
        console.print("no registered versions yet: run 'nbo train MODEL'")
        return
    print_frame(table, "nbo-ranker")



@models_app.command("params")
def model_params(
    model: Annotated[str, typer.Argument(help=f"Model: {', '.join(MODEL_KINDS)}.")],
) -> None:
    """Every setting of MODEL with its default and, for those nbo tune searches, the
    search range ('--set NAME=VALUE' on train, compare and the like)."""
    from training.models import MODELS

    if model not in MODELS:
        raise typer.BadParameter(f"choose one of {', '.join(MODELS)}", param_hint="MODEL")
    kind = MODELS[model]
    table = Table(title=f"{model} settings")
    table.add_column("setting", no_wrap=True)  # a name cut short cannot be --set
    for column in ("default", "searched by nbo tune", "description"):
        table.add_column(column)
    fields = kind.config_class.model_fields
    for name, default in kind().params().items():
        param = kind.search_space.get(name)
        searched = "" if param is None else (
            ", ".join(map(str, param.choices)) if param.kind == "categorical" else
            f"{param.low:g} to {param.high:g}{' (log scale)' if param.log else ''}"
            f" ({param.kind})")
        described = fields.get(name)
        table.add_row(name, str(default), searched,
                      (described.description or "") if described is not None else "")
    console.print(table)


@store_app.command("key")
def store_key() -> None:
    """Print a new erasure key to set as NBO_ERASURE_KEY; for a store made by an earlier
    nbo, which kept its key in the database, print that key instead (set it, and the store
    removes its copy on the next start). Keep it in a secret store, never in the database."""
    from serving.store import legacy_key

    held = legacy_key(settings().consent_url())
    if held is not None:
        err_console.print("this store keeps its erasure key in the database: set it as "
                          "NBO_ERASURE_KEY; the store then removes its copy")
    console.print(held or secrets.token_hex(32), highlight=False)


@store_app.command("export")
def store_export(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder the model was trained from.")],
) -> None:
    """Append the store's events and feedback taken in since the last export of DATASET to
    it, as new part files (events/part-*.parquet, feedback/part-*.parquet) in the data
    contract; run again, it adds nothing new. Erased customers are left out."""
    from nbo.jobs.export import export_store

    store = store_of(settings())
    try:
        with data_errors():
            exported = export_store(store, dataset)
    finally:
        store.close()
    console.print(f"exported {exported.events:,} events and {exported.feedback:,} feedback rows "
                  f"into {dataset} ({exported.repeated:,} repeated events written once, "
                  f"{exported.erased:,} rows of erased customers left out)")
    for path in exported.files:
        console.print(f"  {path}")


EXIT_KEPT, EXIT_FAILED = 10, 20


@app.command()
def retrain(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder the champion was trained "
                                                 "from; the store's new data is added to it.")],
    snapshot: Annotated[Path | None, typer.Option(
        help="Snapshot folder to build; default NBO_HOME/retrain/snapshot.")] = None,
    test_days: TestDaysOption = 30.0,
    k: KOption = 10,
) -> None:
    """One retraining for a scheduler (cron, Airflow): store export, feature build, training
    of the champion's model, the champion gate (the champion scored on the new split) and
    promotion; a running service switches to a promoted model within NBO_RELOAD_SECONDS.
    Exit code 0: promoted; 10: the champion was kept; 20: failed (nothing promoted)."""
    from nbo.jobs.retrain import PROMOTED
    from nbo.jobs.retrain import retrain as run

    current = settings()
    target = snapshot or current.home / "retrain" / "snapshot"
    try:
        client = tracking()
        with steps("retraining") as step:
            done = run(dataset, target, current, client, test_days, k, report=step)
    except Exception as error:  # every failure is this job's one outcome: failed
        raise fail(f"retrain failed: {type(error).__name__}: {error}", EXIT_FAILED) from None
    exported = done.exported
    console.print(f"exported {exported.events:,} events and {exported.feedback:,} feedback "
                  f"rows; challenger version {done.challenger}")
    console.print(done.message)
    if done.outcome != PROMOTED:
        raise typer.Exit(EXIT_KEPT)
    console.print(f"published as {done.published}")
