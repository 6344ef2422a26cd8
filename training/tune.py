"""Hyper-parameter search with Optuna, every trial an MLflow child run of the study's run."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import mlflow
import numpy as np
import optuna
import pandas as pd
import sqlalchemy
import sqlalchemy.exc
from optuna.trial import TrialState

from features.settings import redacted
from training.evaluate import evaluate
from training.models import MODELS, create
from training.models.base import Param
from training.pipeline import Experiment, Trained, train
from training.tracking import flat_metrics

# maximised: their geometric mean, so that a relative gain on "novel" (finding what the
# customer never bought) weighs as much as the same gain on "all", whose NDCG is about three
# times larger; their plain mean let configs trade discovery away for small gains on "all"
OBJECTIVE = ("all.ndcg", "novel.ndcg")
REGISTERED_TRIAL = "nbo.registered_trial"  # study attribute: the trial registered last
COORDINATION = sqlalchemy.MetaData()  # nbo's tables in the study's database
CLAIMS = sqlalchemy.Table(  # which worker registers which trial
    "nbo_registered_trials", COORDINATION,
    sqlalchemy.Column("study", sqlalchemy.String(512), primary_key=True),
    sqlalchemy.Column("trial", sqlalchemy.Integer, primary_key=True),
)
STUDIES = sqlalchemy.Table(  # a row per study, locked while a worker leaves it
    "nbo_tuning_studies", COORDINATION,
    sqlalchemy.Column("study", sqlalchemy.String(512), primary_key=True),
    sqlalchemy.Column("touched", sqlalchemy.Float, nullable=False),
)
WORKERS = sqlalchemy.Table(  # the workers of a study still sampling, seen at each trial
    "nbo_tuning_workers", COORDINATION,
    sqlalchemy.Column("study", sqlalchemy.String(512), primary_key=True),
    sqlalchemy.Column("worker", sqlalchemy.String(32), primary_key=True),
    sqlalchemy.Column("seen", sqlalchemy.Float, nullable=False),
)
STALE_SECONDS = 6 * 3600  # a worker unseen this long is taken for killed
FIRST_LOOK = 0.25  # share of test customers a trial is judged on before it may be pruned
SQLITE_WAIT_SECONDS = 60  # how long a worker waits for another's write lock on a SQLite study
OPENING_TRIES = 5
T = TypeVar("T")


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``url``, safe for workers that open a new one at the same moment.

    Optuna makes its tables and version row on first open without a lock of its own: two
    workers starting together on a new SQLite file raced, and one failed with "table studies
    already exists" or a unique constraint on the version row (seen in CI). The loser's error
    is final only once the tables should be there; a SQLite worker also waits for the other's
    write lock rather than giving up after SQLite's default five seconds."""
    return opened(lambda: optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url)))


def _engine_kwargs(url: str) -> dict[str, Any]:
    return {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}} if url.startswith("sqlite") else {}


def opened(open_: Callable[[], T]) -> T:
    """``open_()``, tried again while another worker is making the same tables."""
    for attempt in range(1, OPENING_TRIES):
        try:
            return open_()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            time.sleep(0.2 * attempt)
    return open_()


class StudyWorkers:
    """The workers sampling one study, kept in the study's database so that the last to
    finish knows it is the last: a worker between two trials has no trial running, so
    Optuna's running trials alone let an early finisher register while another worker was
    still to find a better trial (seen in CI)."""

    def __init__(self, url: str, study: str) -> None:
        self.study, self.worker = study, secrets.token_hex(8)
        self.opened = False  # whether this worker opened the study (see join)
        self.engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
        opened(lambda: COORDINATION.create_all(self.engine))

    def join(self) -> None:
        # the first worker to make the study's row opens it: it alone puts the default
        # configuration first (two workers that each found no trial queued both did)
        self.opened = self.claim(STUDIES, touched=time.time())
        with self.engine.begin() as db:
            db.execute(WORKERS.insert().values(study=self.study, worker=self.worker,
                                               seen=time.time()))

    def seen(self) -> None:
        with self.engine.begin() as db:
            db.execute(WORKERS.update().where(
                (WORKERS.c.study == self.study) & (WORKERS.c.worker == self.worker))
                .values(seen=time.time()))

    def leave(self) -> bool:
        """Leave the study; whether no other worker is still sampling it (one seen within
        ``STALE_SECONDS``). Leaving workers go one at a time: each first locks the study's
        row."""
        now = time.time()
        with self.engine.begin() as db:
            db.execute(STUDIES.update().where(STUDIES.c.study == self.study)
                       .values(touched=now))
            db.execute(WORKERS.delete().where(
                (WORKERS.c.study == self.study) & (WORKERS.c.worker == self.worker)))
            return not db.execute(sqlalchemy.select(WORKERS.c.worker).where(
                (WORKERS.c.study == self.study)
                & (WORKERS.c.seen > now - STALE_SECONDS))).first()

    def claim_registration(self, trial: int) -> bool:
        """Whether this worker registers ``trial`` of the study: the first to insert the
        pair does; a worker finishing at the same moment is refused (both had seen no
        trial running and no trial registered)."""
        return self.claim(CLAIMS, trial=trial)

    def claim(self, table: sqlalchemy.Table, **values: Any) -> bool:
        """Insert the study's row into ``table``; False where another worker has."""
        try:
            with self.engine.begin() as db:
                db.execute(table.insert().values(study=self.study, **values))
            return True
        except sqlalchemy.exc.IntegrityError:
            return False

    def close(self) -> None:
        self.engine.dispose()


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
    return float(balanced(np.array([metrics.get(name, 0.0) for name in OBJECTIVE])))


def balanced(values: np.ndarray) -> float | np.ndarray:
    """The objective of the ``OBJECTIVE`` metrics along the last axis: their geometric mean
    (zero when one of them is)."""
    values = np.asarray(values, dtype=float)
    return np.prod(np.maximum(values, 0.0), axis=-1) ** (1.0 / values.shape[-1])


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
    validation: list[Experiment] | None = None, workers: StudyWorkers | None = None,
    register: bool = True,
) -> Tuned:
    """Search ``kind``'s space; the default config is trial 0 of a new study.

    Trials are judged by the mean objective over the ``validation`` splits (by default the
    experiment's own split). The best trial is evaluated on the experiment's split, refit on
    all data, logged under the study's run and registered as challenger.

    Several workers may share one study (one ``storage``): each samples with its own seed
    (``seed``, else a fresh one; both logged), and only the worker that finishes last (no
    other worker still sampling, no trial of the study running) registers the study's best,
    unless that trial is registered already: one challenger per study. ``workers``: this
    worker's sign-in to the study, made as early as the caller could (else here). Without
    ``register`` the search is all: the best config is returned, nothing is refitted or
    registered (a benchmark that judges configs on windows of its own).
    """
    seed = secrets.randbits(31) if seed is None else seed
    folds = validation or [experiment]
    model_class = MODELS[kind]
    space = model_class.search_space
    name = study_name or f"nbo-{kind}-{experiment.key}-folds{len(folds)}"
    if workers is None:  # sampling from now on, before Optuna's opening
        workers = StudyWorkers(storage, name)
        workers.join()
    elif workers.study != name:
        raise ValueError(f"the worker signed in to study {workers.study!r}, not {name!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=study_storage(storage), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    if workers.opened:
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
            workers.seen()
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

        try:
            study.optimize(objective, n_trials=trials)
        finally:
            last = workers.leave()
        best = study.best_trial
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        left = ("not asked for" if not register
                else "left to the workers still sampling" if not last
                else f"left to the worker of {len(running)} running trial(s)" if running
                else None if workers.claim_registration(best.number)
                else f"trial {best.number} registered by another worker")
        workers.close()
        mlflow.log_metric("best_objective", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        if left:
            mlflow.set_tag("nbo.challenger", left)
            return Tuned(study, best.params, study.best_value, None, parent.info.run_id, seed)
        if report:
            report(f"refitting the best trial ({best.number})")
        study.set_user_attr(REGISTERED_TRIAL, best.number)
        trained = train(experiment, kind, best.params, nested=True, report=report)
    return Tuned(study, best.params, study.best_value, trained, parent.info.run_id, seed)
