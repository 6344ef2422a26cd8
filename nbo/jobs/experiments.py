"""Experiments' jobs: the arms' models put where the service finds them, and what a report
needs of the served catalogue (prices, margins, segments)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from features.settings import Settings
    from serving.attribution import Prices
    from serving.experiments import Arm
    from serving.store import Store


def arms_of(client: Any, wanted: list[tuple[str, str, float]],
            policies: dict[str, str] | None = None) -> list[Arm]:
    """Each (arm, registered model alias or version, share) as an arm serving that version,
    with its offer policy variant's text where ``policies`` names the arm: its model is
    copied into BentoML's store under the arms' name, once per version."""
    from serving.experiments import Arm
    from training.tracking import registered_folder

    policies = policies or {}
    tags: dict[str, str] = {}
    arms = []
    with tempfile.TemporaryDirectory() as tmp:
        for at, (name, ref, share) in enumerate(wanted):
            folder, version = registered_folder(client, ref, Path(tmp) / str(at))
            if version not in tags:
                tags[version] = arm_model(folder, version)
            arms.append(Arm(name, share, tags[version], version, policies.get(name, "")))
    return arms


def arm_model(folder: Path, version: str) -> str:
    """The BentoML store's entry of an arm's model version: the one there, else a copy."""
    import bentoml

    from serving.experiments import ARM_MODEL_NAME
    from serving.models import import_model

    try:
        held = bentoml.models.list(ARM_MODEL_NAME)
    except bentoml.exceptions.NotFound:  # no arm's model yet
        held = []
    for entry in held:
        if entry.info.labels.get("mlflow_version") == version:
            return str(entry.tag)
    return import_model(folder, version, ARM_MODEL_NAME)


def served_catalogue(settings: Settings, store: Store) -> tuple[Prices, pd.Series]:
    """The served model's prices and margins, and each customer's segment by their token."""
    import bentoml
    import pandas as pd

    from features.context import read_context
    from nbo.jobs.newsletter import NoServedModel
    from serving.attribution import Prices
    from serving.engine import CONTEXT_DIR
    from serving.models import newest

    try:
        entry = newest(settings.model_tag)
    except bentoml.exceptions.NotFound:
        raise NoServedModel(f"no model {settings.model_tag} in the BentoML store; run "
                            "'nbo promote' first") from None
    tables, _, _ = read_context(Path(entry.path) / CONTEXT_DIR)
    customers = tables["customers"]
    ids = customers["customer_id"].astype(str).to_numpy()
    segments = pd.Series(customers["segment"].to_numpy(), index=store.tokens(ids))
    return Prices.from_offers(tables["offers"]), segments


def log_report(report: dict[str, Any]) -> str:
    """The report as an MLflow run of the experiment ``nbo-experiments``: each arm's rates
    and each lift as metrics, the whole report as JSON; the run's id."""
    import mlflow

    mlflow.set_experiment("nbo-experiments")
    with mlflow.start_run(run_name=f"report {report['experiment']}") as run:
        mlflow.set_tags({"nbo.experiment": report["experiment"],
                         "nbo.control": report["control"]})
        metrics = {f"{arm['arm']}.{key}": value for arm in report["arms"]
                   for key, value in arm.items()
                   if key != "arm" and isinstance(value, int | float) and value is not None}
        metrics |= {f"lift.{row['arm']}.{row['metric']}": row["difference"]
                    for row in report["lift"] if row.get("difference") is not None}
        mlflow.log_metrics({_metric_name(k): float(v) for k, v in metrics.items()})
        mlflow.log_dict(report, "report.json")
        return str(run.info.run_id)


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-/ " else "_" for c in key)


def simulated_experiment(home: Path, shop: Path, arms: dict[str, tuple[Path, str]],
                         now: Any, customers: int, days: int, seed: int = 0
                         ) -> tuple[Any, Any, Any]:
    """An experiment between saved models (arm name -> model folder with its serving context
    and its version; the first arm serves as the champion and is the control), served in this
    process by the service itself on a store of its own under ``home``, with ``nbo
    simulate``'s customers of the generated ``shop`` responding for ``days`` days from
    ``now``. The models are copied into BentoML's model store. Returns the store (open), the
    experiment and what the simulation did. The process's environment is left as found."""
    import os
    import secrets
    import shutil
    from datetime import timedelta

    from starlette.testclient import TestClient

    from features.generate import hidden_tastes
    from nbo.jobs.simulate import Simulator
    from serving.experiments import ARM_MODEL_NAME, Arm, Experiment
    from serving.models import MODEL_NAME, import_model
    from serving.store import open_store

    work = home / "simulated-experiment"
    shutil.rmtree(work, ignore_errors=True)
    key = secrets.token_urlsafe(16)
    env = {"NBO_API_KEYS": key, "NBO_ADMIN_API_KEYS": secrets.token_urlsafe(16),
           "NBO_ERASURE_KEY": secrets.token_hex(32),
           "NBO_CONSENT_DB_URL": f"sqlite:///{work / 'store.db'}",
           "NBO_NOW": now.isoformat(), "NBO_RELOAD_SECONDS": "0", "NBO_TRIGGER_SECONDS": "0"}
    held = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        tags = {name: import_model(folder, version, MODEL_NAME if n == 0 else ARM_MODEL_NAME)
                for n, (name, (folder, version)) in enumerate(arms.items())}
        experiment = Experiment("simulated", tuple(
            Arm(name, 100 / len(arms), tags[name], version)
            for name, (_, version) in arms.items()), created_at=now)
        store = open_store(_settings())
        store.add_experiment(experiment)
        store.move_experiment("simulated", "running", now)
        from serving.service import NboService

        with TestClient(NboService.to_asgi(),  # type: ignore[attr-defined]
                        headers={"Authorization": f"Bearer {key}"}) as http:
            done = Simulator(http, hidden_tastes(shop), seed=seed).run(
                customers, days, now + timedelta(hours=1))
        return store, store.experiment("simulated"), done
    finally:
        for name, value in held.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _settings() -> Any:
    from features.settings import Settings

    return Settings()
