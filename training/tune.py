"""Hyper-parameter search with Optuna, every trial an MLflow child run of the study's run."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import sqlalchemy.exc
from optuna.trial import TrialState

from features.settings import redacted
from training.evaluate import evaluate
from training.models import MODELS, create
from training.models.base import Param
from training.pipeline import Experiment, Trained, train
from training.tracking import flat_metrics

OBJECTIVE = ("all.ndcg", "novel.ndcg")  # maximised: their mean
REGISTERED_TRIAL = "nbo.registered_trial"  # study attribute: the trial registered last
FIRST_LOOK = 0.25  # share of test customers a trial is judged on before it may be pruned
SQLITE_WAIT_SECONDS = 60  # how long a worker waits for another's write lock on a SQLite study
OPENING_TRIES = 5


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``url``, safe for workers that open a new one at the same moment.

    Optuna makes its tables and version row on first open without a lock of its own: two
    workers starting together on a new SQLite file raced, and one failed with "table studies
    already exists" or a unique constraint on the version row (seen in CI). The loser's error
    is final only once the tables should be there; a SQLite worker also waits for the other's
    write lock rather than giving up after SQLite's default five seconds."""
    engine_kwargs = ({"connect_args": {"timeout": SQLITE_WAIT_SECONDS}}
                     if url.startswith("sqlite") else {})
    for attempt in range(1, OPENING_TRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            time.sleep(0.2 * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p.kind == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        elif p.kind == "float":
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return params


def objective_value(evaluation: pd.DataFrame) -> float:
    metrics = flat_metrics(evaluation)
    return float(np.mean([metrics.get(name, 0.0) for name in OBJECTIVE]))


@dataclass
class Tuned:
    study: optuna.Study
    best_params: dict[str, Any]
    best_value: float
    trained: Trained | None  # None: another worker of the study was still running
    parent_run_id: str
    seed: int  # this worker's sampler seed


def tune(
    experiment: Experiment, kind: str, trials: int, storage: str, study_name: str | None = None,
    seed: int | None = None, report: Callable[[str], None] | None = None,
    validation: list[Experiment] | None = None,
) -> Tuned:
    """Search ``kind``'s space; the default config is trial 0 of a new study.

    Trials are judged by the mean objective over the ``validation`` splits (by default the
    experiment's own split). The best trial is evaluated on the experiment's split, refit on
    all data, logged under the study's run and registered as challenger.

    Several workers may share one study (one ``storage``): each samples with its own seed
    (``seed``, else a fresh one; both logged), and only the worker that finishes last, with
    no trial of the study running, registers the study's best, unless that trial is
    registered already: one challenger per study.
    """
    seed = secrets.randbits(31) if seed is None else seed
    folds = validation or [experiment]
    model_class = MODELS[kind]
    space = model_class.search_space
    name = study_name or f"nbo-{kind}-{experiment.key}-folds{len(folds)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=study_storage(storage), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    defaults = model_class().params()
    study.enqueue_trial({key: defaults[key] for key in space}, skip_if_exists=True)
    rng = np.random.default_rng(seed)
    tests = folds[0].split.test_customers
    first = np.sort(rng.choice(tests, max(1, int(len(tests) * FIRST_LOOK)), replace=False))

    with mlflow.start_run(run_name=f"tune-{kind}") as parent:
        mlflow.set_tags({"nbo.model": kind, "nbo.split": experiment.key, "nbo.study": name})
        mlflow.log_params({"model": kind, "trials": trials, "storage": redacted(storage),
                           "sampler_seed": seed,
                           "study": name, "folds": ",".join(f.key for f in folds),
                           **experiment.params()})

        def objective(trial: optuna.Trial) -> float:
            params = suggest(trial, space)
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                mlflow.log_params({"trial": trial.number,
                                   **{f"model.{k}": v for k, v in params.items()}})
                if report:
                    report(f"trial {trial.number + 1}/{trials}: fitting")
                model = create(kind, params).fit(folds[0].split.data)
                glance = objective_value(evaluate(model, folds[0].split, folds[0].k, first))
                trial.report(glance, step=0)
                if trial.should_prune():
                    mlflow.set_tag("nbo.trial", "pruned")
                    mlflow.log_metric("first_look", glance)
                    raise optuna.TrialPruned()
                values = []
                for i, fold in enumerate(folds):
                    if i:
                        model = create(kind, params).fit(fold.split.data)
                    evaluation = evaluate(model, fold.split, fold.k)
                    values.append(objective_value(evaluation))
                    mlflow.log_metrics({f"fold{i}.{k}": v
                                        for k, v in flat_metrics(evaluation).items()})
                value = float(np.mean(values))
                mlflow.log_metric("objective", value)
                mlflow.set_tag("nbo.trial", "complete")
                return value

        study.optimize(objective, n_trials=trials)
        best = study.best_trial
        mlflow.log_metric("best_objective", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        registered = study.user_attrs.get(REGISTERED_TRIAL)
        if running or registered == best.number:
            mlflow.set_tag("nbo.challenger", f"trial {registered} registered already"
                           if not running else f"left to the worker of {len(running)} "
                           "running trial(s)")
            return Tuned(study, best.params, study.best_value, None, parent.info.run_id, seed)
        if report:
            report(f"refitting the best trial ({best.number})")
        study.set_user_attr(REGISTERED_TRIAL, best.number)
        trained = train(experiment, kind, best.params, nested=True, report=report)
    return Tuned(study, best.params, study.best_value, trained, parent.info.run_id, seed)
