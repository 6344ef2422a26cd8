"""MLflow: runs with params, metrics and artifacts; the registry with challenger and champion.

Nothing here sets a tracking URI at import: entry points call :func:`use_tracking`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient

from features.context import DATASET_FILE
from training.models.base import Recommender
from training.ranking import top_k

MODEL_NAME = "nbo-ranker"
EXPERIMENT = "nbo"
CHALLENGER, CHAMPION = "challenger", "champion"
CONTEXT_DIR = "context"  # serving tables inside the model folder
GATE_METRICS = ("all.ndcg", "novel.ndcg")  # the champion gate compares these, on one split
_REQUIREMENTS = ("numpy", "scipy", "pandas", "pyarrow", "pydantic", "implicit", "lightfm-next",
                 "scikit-learn")


SIGNATURE_INPUT = pd.DataFrame({"customer_id": ["c1"], "k": [10.0]})
SIGNATURE = infer_signature(
    SIGNATURE_INPUT,
    pd.DataFrame({"customer_id": ["c1"], "product_id": ["p1"], "rank": [1.0], "score": [0.5]}),
)


def use_tracking(uri: str) -> MlflowClient:
    """Point MLflow at ``uri`` (tracking and registry) and make sure the experiment exists.

    With a SQLite file the experiment's artifacts go to ``mlartifacts`` beside it (MLflow's
    own default is the current directory), so the runs and their files stay together."""
    artifacts = None
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
        artifacts = (folder / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class NboRanker(PythonModel):  # type: ignore[misc]
    """The registered pyfunc: its artifacts are the saved model folder (factors, id maps,
    offer table, config). ``predict`` takes ``customer_id`` (and optionally ``k``) and
    returns the top offers per customer; serving loads the folder itself."""

    def load_context(self, context: Any) -> None:
        self.model = Recommender.load(Path(context.artifacts["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None
                ) -> pd.DataFrame:
        k = int(model_input["k"].iloc[0]) if "k" in model_input else 10
        ids = model_input["customer_id"].astype(str).to_numpy()
        scores = self.model.score(ids)
        best = top_k(scores, k)
        rows = [
            {"customer_id": cid, "product_id": self.model.items.ids[item], "rank": rank + 1,
             "score": float(scores[i, item])}
            for i, cid in enumerate(ids) for rank, item in enumerate(best[i])
        ]
        return pd.DataFrame(rows)


def flat_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Evaluation rows as MLflow metric names: 'all.ndcg', 'novel.cold-start.recall', ..."""
    metrics: dict[str, float] = {}
    for row in table.itertuples(index=False):
        group = "" if row.group == "overall" else f"{str(row.group).replace('stage: ', 'stage_')}."
        for name in ("ndcg", "recall", "precision", "map", "hit_rate", "coverage"):
            metrics[f"{row.task}.{group}{name}"] = float(getattr(row, name))
    return metrics


@dataclass
class Logged:
    run_id: str
    version: str | None


def log_model_run(
    model: Recommender,
    evaluation: pd.DataFrame,
    manifest: dict[str, Any],
    split_key: str,
    extra_params: dict[str, Any],
    extra_metrics: dict[str, float],
    register: bool = True,
    nested: bool = False,
    tables: dict[str, pd.DataFrame] | None = None,
    context: Callable[[Path], Any] | None = None,
) -> Logged:
    """One MLflow run: params, metrics, the feature manifest, the evaluation table and the
    model as a pyfunc; registered as a new version with the alias ``challenger``.

    ``context`` writes what serving needs besides the model (offer table, customer state,
    consents) into the given folder, which goes into the model's artifact."""
    with mlflow.start_run(run_name=model.kind, nested=nested) as run:
        log_evaluation(model, evaluation, split_key, extra_params, extra_metrics)
        mlflow.log_dict(manifest, "features/manifest.json")
        for name, table in (tables or {}).items():
            mlflow.log_text(table.to_csv(index=False), f"{name}.csv")
        dataset = dataset_record(manifest)
        with tempfile.TemporaryDirectory() as tmp:
            folder = model.save(Path(tmp) / "model")
            (folder / DATASET_FILE).write_text(json.dumps(dataset, indent=2) + "\n")
            if context is not None:
                context(folder / CONTEXT_DIR)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("ranker_pyfunc.py")),
                artifacts={"model": str(folder)}, signature=SIGNATURE,
                input_example=SIGNATURE_INPUT,
                pip_requirements=[f"{p}=={metadata.version(p)}" for p in _REQUIREMENTS],
            )
        version = None
        if register:
            version = register_challenger(info.model_uri, {
                "nbo.dataset": dataset["dataset"],
                "nbo.dataset_fingerprint": dataset["fingerprint"]})
        return Logged(run.info.run_id, version)


def dataset_record(manifest: dict[str, Any]) -> dict[str, str]:
    """What a model was trained on, from its snapshot's manifest: the dataset folder's name
    (what a service's store is bound to), its fingerprint and the snapshot's moment."""
    return {"dataset": Path(str(manifest.get("dataset", ""))).name,
            "fingerprint": str(manifest.get("fingerprint", "")),
            "snapshot_now": str(manifest.get("now", ""))}


def log_evaluation(model: Recommender, evaluation: pd.DataFrame, split_key: str,
                   extra_params: dict[str, Any] | None = None,
                   extra_metrics: dict[str, float] | None = None) -> None:
    """A model's kind, config and evaluation (every metric, and the table) on the active run."""
    mlflow.set_tags({"nbo.model": model.kind, "nbo.split": split_key})
    mlflow.log_params({"model": model.kind, **{f"model.{k}": v for k, v in
                                              model.params().items()}, **(extra_params or {})})
    mlflow.log_metrics({**flat_metrics(evaluation), **(extra_metrics or {})})
    mlflow.log_text(evaluation.to_csv(index=False), "evaluation.csv")


def register_challenger(model_uri: str, tags: dict[str, str] | None = None) -> str:
    client = MlflowClient()
    result = mlflow.register_model(model_uri, MODEL_NAME, tags=tags)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, result.version)
    return str(result.version)


def version_by_alias(client: MlflowClient, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        return None


def run_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    return dict(client.get_run(run_id).data.metrics)


@dataclass
class Decision:
    promoted: bool
    challenger: str | None
    champion: str | None
    comparison: pd.DataFrame
    message: str

    def __post_init__(self) -> None:  # MLflow returns versions as int or str
        self.challenger = None if self.challenger is None else str(self.challenger)
        self.champion = None if self.champion is None else str(self.champion)


def compare(challenger: dict[str, float], champion: dict[str, float]) -> pd.DataFrame:
    rows = [{"metric": m, "challenger": challenger.get(m, float("nan")),
             "champion": champion.get(m, float("nan"))} for m in GATE_METRICS]
    table = pd.DataFrame(rows)
    table["at least as good"] = table["challenger"] >= table["champion"]
    return table


def promote(client: MlflowClient, force: bool = False,
            baseline: dict[str, float] | None = None) -> Decision:
    """Move ``champion`` to the challenger if it is at least as good on the gate metrics of
    the same split as the current champion, or with ``force`` (recorded as a tag).
    ``baseline``: the champion's metrics measured on the challenger's split (a retrain scores
    the champion as it serves on the new split), compared instead of those of its run."""
    challenger = version_by_alias(client, CHALLENGER)
    if challenger is None:
        return Decision(False, None, None, pd.DataFrame(),
                        f"no '{CHALLENGER}' version of {MODEL_NAME}: run 'nbo train' first")
    champion = version_by_alias(client, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        return Decision(False, challenger.version, champion.version, pd.DataFrame(),
                        f"version {challenger.version} already is the champion")
    new = run_metrics(client, challenger.run_id)
    comparison = pd.DataFrame()
    if champion is None:
        ok, why = True, "there was no champion"
    elif baseline is not None:
        comparison = compare(new, baseline)
        ok = bool(comparison["at least as good"].all())
        why = ("at least as good as the champion on the new split" if ok else
               "worse than the champion on the new split on " + ", ".join(
                   comparison.loc[~comparison["at least as good"], "metric"]))
    else:
        split_new = client.get_run(challenger.run_id).data.tags.get("nbo.split")
        split_old = client.get_run(champion.run_id).data.tags.get("nbo.split")
        if split_new != split_old and not force:
            return Decision(False, challenger.version, champion.version, comparison,
                            f"the challenger was evaluated on split {split_new}, the champion on "
                            f"{split_old}: retrain both on one snapshot, or use --force")
        comparison = compare(new, run_metrics(client, champion.run_id))
        ok = bool(comparison["at least as good"].all())
        why = "at least as good on " + ", ".join(GATE_METRICS) if ok else "worse on " + ", ".join(
            comparison.loc[~comparison["at least as good"], "metric"])
    if not ok and not force:
        record(challenger.run_id, {"promotion": "refused", "comparison": comparison})
        return Decision(False, challenger.version, getattr(champion, "version", None),
                        comparison, f"not promoted: version {challenger.version} is {why}")
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, challenger.version)
    if force and not ok:
        client.set_model_version_tag(MODEL_NAME, challenger.version, "nbo.forced", "true")
        why = f"forced although {why}"
    record(challenger.run_id, {"promotion": "promoted", "comparison": comparison,
                               "forced": bool(force and not ok)})
    return Decision(True, challenger.version, getattr(champion, "version", None), comparison,
                    f"version {challenger.version} is now the champion ({why})")


def record(run_id: str, outcome: dict[str, Any]) -> None:
    """Log a promotion decision and its comparison into the challenger's run."""
    comparison = outcome.pop("comparison")
    payload = {**outcome, "comparison": comparison.to_dict(orient="records")}
    MlflowClient().log_text(run_id, json.dumps(payload, indent=2, default=str),
                            "promotion.json")


def list_versions(client: MlflowClient) -> pd.DataFrame:
    """Every registered version with its aliases, model, gate metrics, split and dataset."""
    try:
        versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    except MlflowException:
        return pd.DataFrame()
    if not versions:
        return pd.DataFrame()
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(MODEL_NAME).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        # a version registered from outside a run has no tags or metrics to show
        run = client.get_run(v.run_id).data if v.run_id else None
        tags = run.tags if run else {}
        metrics = run.metrics if run else {}
        rows.append({
            "version": int(v.version), "aliases": ",".join(aliases.get(str(v.version), [])),
            "model": tags.get("nbo.model", ""),
            **{m: metrics.get(m, float("nan")) for m in GATE_METRICS},
            "split": tags.get("nbo.split", ""), "dataset": (v.tags or {}).get("nbo.dataset", ""),
            "run_id": v.run_id or "",
        })
    return pd.DataFrame(rows)


def registered_folder(client: MlflowClient, alias: str = CHAMPION,
                      into: Path | None = None) -> tuple[Path, str]:
    """The saved model folder behind an alias, or a version number (``7`` or ``v7``), with
    its serving context, and its version."""
    number = alias.removeprefix("v")
    if number.isdigit():
        try:
            version = client.get_model_version(MODEL_NAME, number)
        except MlflowException:
            raise LookupError(f"{MODEL_NAME} has no version {number}") from None
        uri = f"models:/{MODEL_NAME}/{number}"
    else:
        found = version_by_alias(client, alias)
        if found is None:
            raise LookupError(f"{MODEL_NAME} has no '{alias}' version yet; train and promote "
                              "first")
        version = found
        uri = f"models:/{MODEL_NAME}@{alias}"
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=None if into is None else
                                                 str(into))
    return next(Path(folder).rglob("model.json")).parent, str(version.version)


def load_registered(client: MlflowClient, alias: str = CHAMPION) -> tuple[Recommender, str]:
    """The model behind an alias and its version: everything serving needs is in its folder."""
    folder, version = registered_folder(client, alias)
    return Recommender.load(folder), version
