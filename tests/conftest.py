from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# BentoML reads its home once: the test session gets its own model store
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="nbo-bentoml-")
# what 'bentoml serve' sets up for its workers, needed by /metrics served in-process
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nbo-prometheus-")

ONLINE_RETAIL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "online_retail" / (
    "online_retail.csv"
)


@pytest.fixture(scope="session")
def online_retail_csv() -> Path:
    if not ONLINE_RETAIL.exists():
        pytest.skip(f"real-data test: {ONLINE_RETAIL} is absent (it lives in ../shared, beside "
                    "the project checkout)")
    return ONLINE_RETAIL


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated shop, shared read-only by the tests of a session."""
    from features.generate import ShopSpec, generate_shop

    out = tmp_path_factory.mktemp("shop")
    generate_shop(ShopSpec(customers=400, seed=3), out)
    return out


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own NBO_HOME so no state leaks between tests or into the repo."""
    home = tmp_path / "nbo-home"
    monkeypatch.setenv("NBO_HOME", str(home))
    monkeypatch.delenv("NBO_NOW", raising=False)
    return home


@pytest.fixture(scope="session")
def snapshot_dir(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.snapshot import build_snapshot

    out = tmp_path_factory.mktemp("snapshot")
    build_snapshot(shop, out)
    return out


@pytest.fixture(scope="session")
def model_dir(snapshot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ALS model of the shop saved with its serving context, as training registers it."""
    from features.snapshot import load_snapshot
    from training.data import TrainData
    from training.models import create
    from training.pipeline import write_serving_context

    snapshot = load_snapshot(snapshot_dir)
    model = create("als", {"factors": 16, "iterations": 10}).fit(
        TrainData.from_features(snapshot.features))
    folder = model.save(tmp_path_factory.mktemp("model") / "model")
    write_serving_context(snapshot, folder / "context")
    return folder
