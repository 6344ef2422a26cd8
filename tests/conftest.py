from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from free_ports import free_port
from store_backends import ERASURE_KEY

from features.settings import quiet_third_parties

if TYPE_CHECKING:
    from serving.store import Store

quiet_third_parties()
pytest_plugins = ["service_client"]  # the in-process service's fixtures
# BentoML reads its home once: the test session gets its own model store
SESSION_FOLDERS = [tempfile.mkdtemp(prefix=f"nbo-{name}-") for name in ("bentoml", "prometheus")]
os.environ["BENTOML_HOME"] = SESSION_FOLDERS[0]
# what 'bentoml serve' sets up for its workers, needed by /metrics served in-process
os.environ["PROMETHEUS_MULTIPROC_DIR"] = SESSION_FOLDERS[1]
os.environ["NBO_ERASURE_KEY"] = ERASURE_KEY  # services and jobs the tests start open stores


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's own folders go with it (pytest's tmp_path folders are pruned by pytest)."""
    for folder in SESSION_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)

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
def saved_model(snapshot_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Callable[[str, dict], Path]:
    """Fits a model of the shop and saves it with its serving context, as training registers
    it: ``saved_model(kind, params)`` gives the folder."""
    from features.snapshot import load_snapshot
    from training.data import TrainData
    from training.models import create
    from training.pipeline import write_serving_context

    def save(kind: str, params: dict) -> Path:
        snapshot = load_snapshot(snapshot_dir)
        model = create(kind, params).fit(TrainData.from_features(snapshot.features))
        folder = model.save(tmp_path_factory.mktemp(kind) / "model")
        write_serving_context(snapshot, folder / "context")
        return folder

    return save


@pytest.fixture(scope="session")
def model_dir(saved_model: Callable[[str, dict], Path]) -> Path:
    """An ALS model of the shop saved with its serving context."""
    return saved_model("als", {"factors": 16, "iterations": 10})


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the store's tests: ``NBO_TEST_POSTGRES_URL`` if set, else a
    throw-away cluster started from the machine's PostgreSQL binaries."""
    given = os.environ.get("NBO_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    binaries = [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))]
    found = shutil.which("initdb")
    folder = Path(found).parent if found else (binaries[-1] if binaries else None)
    if folder is None or not (folder / "pg_ctl").exists():
        pytest.skip("PostgreSQL test: no initdb/pg_ctl on this machine and no "
                    "NBO_TEST_POSTGRES_URL")
    base = Path(tempfile.mkdtemp(prefix="nbo-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        owner = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(base, owner)
        base.chmod(0o700)
        as_owner = ["runuser", "-u", owner, "--"]
    data, port = base / "data", free_port()
    subprocess.run([*as_owner, str(folder / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "nbo", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_owner, str(folder / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                    str(base / "server.log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://nbo@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_owner, str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def consent_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's database for one test: a SQLite file, or with ``indirect`` parameter
    "postgresql" a new database of its own on the PostgreSQL server."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return f"sqlite:///{tmp_path / 'consent.db'}"
    from sqlalchemy import create_engine, text

    server = request.getfixturevalue("postgres_url")
    name = f"nbo_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def store(consent_url: str) -> Iterator[Store]:
    """The service's store on ``consent_url``, closed after the test."""
    from serving.store import Store

    opened = Store(consent_url, ERASURE_KEY)
    yield opened
    opened.close()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
