"""MLflow tracking, registry and the champion gate, on a temporary SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.snapshot import build_snapshot
from training.pipeline import prepare, train
from training.tracking import (
    CHALLENGER,
    CHAMPION,
    list_versions,
    load_registered,
    promote,
    use_tracking,
    version_by_alias,
)


@pytest.fixture(scope="module")
def experiment(shop: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    snapshot = tmp_path_factory.mktemp("snap")
    build_snapshot(shop, snapshot)
    return prepare(snapshot, test_days=60)


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    return use_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_gate_accepts_better_and_refuses_worse(experiment, client) -> None:  # type: ignore[no-untyped-def]
    weak = train(experiment, "popularity")
    first = promote(client)
    assert first.promoted and str(version_by_alias(client, CHAMPION).version) == weak.logged.version

    strong = train(experiment, "ease", {"l2": 50.0})
    better = promote(client)
    assert better.promoted, better.message
    assert str(version_by_alias(client, CHAMPION).version) == strong.logged.version

    train(experiment, "popularity")
    worse = promote(client)
    assert not worse.promoted and "worse" in worse.message
    assert not worse.comparison["at least as good"].all()
    assert str(version_by_alias(client, CHAMPION).version) == strong.logged.version

    forced = promote(client, force=True)
    assert forced.promoted and "forced" in forced.message
    champion = version_by_alias(client, CHAMPION)
    assert champion.tags.get("nbo.forced") == "true"


def test_runs_log_params_metrics_manifest_and_a_loadable_model(experiment, client) -> None:  # type: ignore[no-untyped-def]
    trained = train(experiment, "als", {"factors": 8, "iterations": 5})
    run = client.get_run(trained.logged.run_id)
    assert run.data.params["model"] == "als" and run.data.params["model.factors"] == "8"
    assert {"all.ndcg", "novel.ndcg", "all.cold-start.ndcg", "fit_seconds"} <= set(
        run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"features", "evaluation.csv"} <= artifacts
    assert str(version_by_alias(client, CHALLENGER).version) == trained.logged.version

    model, version = load_registered(client, CHALLENGER)
    ids = trained.model.customers.to_list()[:4]
    np.testing.assert_allclose(model.score(ids), trained.model.score(ids), rtol=1e-5)
    assert version == trained.logged.version
    table = list_versions(client)
    assert table["model"].tolist()[-1] == "als" and "challenger" in table["aliases"].iloc[-1]
    manifest = experiment.snapshot.manifest
    tags = version_by_alias(client, CHALLENGER).tags
    assert tags["nbo.dataset"] == Path(manifest["dataset"]).name == table["dataset"].iloc[-1]
    assert tags["nbo.dataset_fingerprint"] == manifest["fingerprint"]
    import json
    import tempfile

    from training.calibration import Calibration
    from training.tracking import registered_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = registered_folder(client, CHALLENGER, Path(tmp))
        record = json.loads((folder / "dataset.json").read_text())
        calibration = Calibration.read(folder / "context")
    assert record["dataset"] == tags["nbo.dataset"] and record["fingerprint"] == \
        manifest["fingerprint"]
    # the propensity logged with the model: from the split, never rising down the ranking
    assert calibration is not None and calibration.default.source == "holdout"
    curve = calibration.default.by_rank
    assert calibration.default.observations == len(experiment.split.test_customers)
    assert len(curve) == 100 and (np.diff(curve) <= 1e-12).all() and 0 < curve[0] < 1


def test_promote_without_a_challenger_says_what_to_do(client) -> None:  # type: ignore[no-untyped-def]
    decision = promote(client)
    assert not decision.promoted and "nbo train" in decision.message


def test_tuning_writes_a_parent_run_with_a_child_run_per_trial(  # type: ignore[no-untyped-def]
    experiment, client, tmp_path: Path
) -> None:
    from training.models import create
    from training.tune import tune

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = tune(experiment, "ease", trials=4, storage=storage, seed=1)
    trials = result.study.trials
    assert len(trials) == 4
    assert trials[0].params["l2"] == create("ease").params()["l2"]  # defaults first
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    trial_runs = [r for r in children if r.info.run_name.startswith("trial-")]
    assert len(trial_runs) == 4
    complete = [r for r in trial_runs if r.data.tags.get("nbo.trial") == "complete"]
    assert complete and all("objective" in r.data.metrics for r in complete)
    assert any(r.info.run_name == "ease" for r in children)  # the refit best model
    assert result.trained.model.params()["l2"] == result.best_params["l2"]
    again = tune(experiment, "ease", trials=1, storage=storage, seed=1)  # same study resumes
    assert len(again.study.trials) == 5


def test_tuning_on_validation_windows_leaves_the_test_window_unseen(  # type: ignore[no-untyped-def]
    experiment, client, tmp_path: Path
) -> None:
    from training.pipeline import validation_folds
    from training.tune import tune

    folds = validation_folds(experiment, 2, days=30)
    cutoff = experiment.split.cutoff
    assert [f.split.cutoff for f in folds] == [cutoff - pd.Timedelta(days=30),
                                               cutoff - pd.Timedelta(days=60)]
    events = experiment.snapshot.events
    buys = events[events["event_type"] == "purchase"]
    for fold in folds:  # each fold's truth lies inside its own 30-day window
        start = fold.split.cutoff
        window = buys[(buys["timestamp"] >= start)
                      & (buys["timestamp"] < start + pd.Timedelta(days=30))]
        rows, cols = fold.split.truth.nonzero()
        truth = set(zip(fold.split.data.customers.ids[rows], fold.split.data.items.ids[cols],
                        strict=True))
        assert truth and truth <= set(zip(window["customer_id"], window["product_id"],
                                          strict=True))
    result = tune(experiment, "ease", trials=2, storage=f"sqlite:///{tmp_path / 'o.db'}",
                  validation=folds)
    child = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string="tags.`nbo.trial` = 'complete'")[0]
    assert {"fold0.all.ndcg", "fold1.all.ndcg", "objective"} <= set(child.data.metrics)
    metrics = child.data.metrics  # each fold's geometric mean of the tasks, then their mean
    assert metrics["objective"] == pytest.approx(
        (np.sqrt(metrics["fold0.all.ndcg"] * metrics["fold0.novel.ndcg"])
         + np.sqrt(metrics["fold1.all.ndcg"] * metrics["fold1.novel.ndcg"])) / 2)


def test_the_objective_weighs_a_relative_gain_in_discovery_as_one_on_all() -> None:
    """A config 10% behind on "all" but 15% ahead on "novel" wins: with the tasks' plain
    mean, "all" (about three times the NDCG) decided alone."""
    from training.tune import objective_value

    def evaluation(all_: float, novel: float) -> pd.DataFrame:
        others = ("recall", "precision", "map", "hit_rate", "coverage")
        return pd.DataFrame({"task": ["all", "novel"], "group": "overall",
                             "ndcg": [all_, novel], **{name: 0.0 for name in others}})

    assert objective_value(evaluation(0.30, 0.115)) > objective_value(evaluation(0.33, 0.10))
    assert objective_value(evaluation(0.3, 0.1)) == pytest.approx(np.sqrt(0.03))
    assert objective_value(evaluation(0.3, 0.0)) == 0.0


def test_a_search_without_registering_refits_and_registers_nothing(  # type: ignore[no-untyped-def]
        experiment, client, tmp_path: Path) -> None:
    from training.tune import tune

    result = tune(experiment, "ease", trials=2, storage=f"sqlite:///{tmp_path / 'o.db'}",
                  seed=3, register=False)
    assert result.trained is None and len(result.study.trials) == 2
    assert set(result.best_params) == {"l2", "binary"}
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert all(r.info.run_name.startswith("trial-") for r in children)
    assert list_versions(client).empty


def test_a_logged_comparison_is_a_parent_run_with_one_child_per_candidate(  # type: ignore[no-untyped-def]
        experiment, client) -> None:
    import mlflow

    from training.pipeline import compare_candidates

    table = compare_candidates(experiment, ["popularity", "itemknn"], log=True)
    runs = mlflow.search_runs(experiment_names=["nbo"], filter_string="tags.`nbo.job` = 'compare'")
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and sorted(children["tags.nbo.model"]) == ["itemknn", "popularity"]
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    logged = children.set_index("tags.nbo.model")["metrics.all.ndcg"]
    expected = table[table["task"] == "all"].set_index("model")["ndcg"]
    assert np.allclose(logged.sort_index(), expected.sort_index())
    assert children["metrics.novel.cold-start.ndcg"].notna().all()
    assert children["metrics.fit_seconds"].gt(0).all()
    assert list_versions(client).empty  # a comparison registers nothing


def test_artifacts_live_beside_a_sqlite_store(experiment, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = use_tracking(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    trained = train(experiment, "popularity")
    assert not any(elsewhere.iterdir())  # nothing written where the job was started
    run = client.get_run(trained.logged.run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://nbo:s3cret@db:5432/nbo", "postgresql+psycopg://nbo:***@db:5432/nbo"),
    ("postgresql://nbo@db/nbo?sslmode=require&password=s3cret",
     "postgresql://nbo@db/nbo?sslmode=require&password=***"),
    ("sqlite:////var/nbo/optuna.db", "sqlite:////var/nbo/optuna.db"),
])
def test_database_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    from features.settings import redacted

    assert redacted(url) == shown


def test_a_tuning_storage_password_is_not_logged(experiment, client, postgres_url: str  # type: ignore[no-untyped-def]
                                                 ) -> None:
    from training.tune import tune

    storage = postgres_url.replace("nbo@", "nbo:s3cret@")  # the server trusts, ignores it
    result = tune(experiment, "popularity", trials=1, storage=storage, seed=3)
    logged = client.get_run(result.parent_run_id).data.params
    assert logged["storage"] == postgres_url.replace("nbo@", "nbo:***@")
    assert logged["sampler_seed"] == "3"


@pytest.mark.slow
def test_two_tuning_workers_on_one_study_sample_apart_and_register_one_challenger(
        snapshot_dir: Path, tmp_path: Path) -> None:
    """Two 'nbo tune' processes on one storage and one study, as the README runs them."""
    import optuna

    from training.tracking import MODEL_NAME

    env = {**os.environ, "NBO_HOME": str(tmp_path / "home")}
    tracking = use_tracking(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")  # a workspace in use
    command = [sys.executable, "-m", "nbo", "tune", "ease", "--trials", "4", "--folds", "0",
               "--snapshot", str(snapshot_dir), "--study", "shared"]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    seeds = {line for out in outputs for line in out.splitlines() if "sampler seed" in line}
    assert len(seeds) == 2, outputs
    study = optuna.load_study(study_name="shared",
                              storage=f"sqlite:///{tmp_path / 'home' / 'optuna.db'}")
    sampled = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(study.trials) == 8 and len(set(sampled)) == len(sampled), sampled
    assert len(tracking.search_model_versions(f"name = '{MODEL_NAME}'")) == 1, outputs


def _open_at_the_barrier(url: str, barrier: Any) -> None:
    from training.tune import study_storage

    barrier.wait()
    study_storage(url)


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_study_at_once_all_get_it(tmp_path: Path) -> None:
    """Regression: two 'nbo tune' workers started together on a new SQLite storage raced in
    Optuna's table creation, and one exited with "table studies already exists" or a unique
    constraint on the version row (CI, 2 of 367 tests). Forked pairs open at one barrier."""
    import multiprocessing

    import training.tune  # noqa: F401  (imported before the fork, so the opening is the race)

    context = multiprocessing.get_context("fork")
    failed = []
    for round_ in range(12):
        url = f"sqlite:///{tmp_path / f'optuna{round_}.db'}"
        barrier = context.Barrier(2)
        workers = [context.Process(target=_open_at_the_barrier,
                                   args=(url, barrier))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        failed += [round_ for worker in workers if worker.exitcode != 0]
    assert not failed, f"a worker failed to open the new storage in rounds {failed}"


def _claim_at_the_barrier(url: str, barrier: Any, won: Any) -> None:
    from training.tune import StudyWorkers

    workers = StudyWorkers(url, "shared")
    barrier.wait()
    if workers.claim_registration(3):
        with won.get_lock():
            won.value += 1


def test_of_workers_finishing_at_once_one_registers_the_best_trial(tmp_path: Path) -> None:
    """Regression: two tuning workers that finished together both saw no trial running and
    none registered, and both registered a challenger (CI). Forked pairs claim at one
    barrier; exactly one wins each time, and a trial is claimed once ever."""
    import multiprocessing

    from training.tune import StudyWorkers

    context = multiprocessing.get_context("fork")
    winners = []
    for round_ in range(8):
        url = f"sqlite:///{tmp_path / f'claims{round_}.db'}"
        barrier, won = context.Barrier(2), context.Value("i", 0)
        workers = [context.Process(target=_claim_at_the_barrier, args=(url, barrier, won))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        winners.append(won.value)
    assert winners == [1] * 8
    workers = StudyWorkers(f"sqlite:///{tmp_path / 'claims0.db'}", "shared")
    assert not workers.claim_registration(3)  # registered already
    assert workers.claim_registration(4)  # a better trial of a later run


def test_only_the_last_worker_to_leave_a_study_is_told_it_is_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker between two trials has no trial running: the study's workers say who is
    still sampling. One killed (unseen for STALE_SECONDS) does not keep the others waiting."""
    import training.tune as tune

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    early, late, killed = (tune.StudyWorkers(url, "shared") for _ in range(3))
    for worker in (early, late, killed):
        worker.join()
    # the first to join opened the study: it alone queues the default configuration
    assert [w.opened for w in (early, late, killed)] == [True, False, False]
    late.seen()
    assert early.leave() is False  # late (and killed) still sampling
    monkeypatch.setattr(tune.time, "time", lambda: 10**10)  # far later: all unseen since
    late.seen()
    assert late.leave() is True
    again = tune.StudyWorkers(url, "shared")
    again.join()
    assert not again.opened  # the default ran when the study opened
    assert again.leave() is True  # the study can be tuned again
