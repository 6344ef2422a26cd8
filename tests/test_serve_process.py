"""One real ``bentoml serve`` process answering /rank and /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from free_ports import free_port

from features.snapshot import load_snapshot
from serving import process

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]


def service_env(snapshot_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NBO_API_KEYS": "k", "NBO_ADMIN_API_KEYS": "a",
           "NBO_CONSENT_DB_URL": f"sqlite:///{tmp_path / 'consent.db'}",
           "NBO_NOW": load_snapshot(snapshot_dir).now.isoformat(), "NBO_RELOAD_SECONDS": "0",
           **extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets up its own
    return env


@contextmanager
def serving(env: dict[str, str], log: Path, service: str = process.SERVICE,
            cwd: Path | None = None) -> Iterator[str]:
    port = free_port()
    server = process.start(port, env, log, service=service, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(server, url, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def ranks(url: str, snapshot_dir: Path) -> dict:
    customer = load_snapshot(snapshot_dir).features.customer_state["customer_id"].iloc[0]
    ranked = httpx.post(f"{url}/rank", json={"customer_id": customer, "k": 5},
                        headers={"X-API-Key": "k"}, timeout=10)
    assert ranked.status_code == 200, ranked.text
    assert httpx.post(f"{url}/rank", json={"customer_id": customer},
                      timeout=10).status_code == 401
    return dict(ranked.json())


def test_bentoml_serve_answers_rank_and_metrics(model_dir: Path, snapshot_dir: Path,
                                                tmp_path: Path) -> None:
    from serving.models import import_model

    import_model(model_dir, "7")
    with serving(service_env(snapshot_dir, tmp_path), tmp_path / "serve.log") as url:
        ranked = ranks(url, snapshot_dir)
        assert ranked["model_version"] == "7" and ranked["offers"]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'nbo_served_offers_total{endpoint="rank"}' in metrics
        assert 'nbo_gc_longest_pause_seconds{generation="0"}' in metrics
        assert not process.port_is_free(int(url.rsplit(":", 1)[1]))


def test_the_built_bento_carries_the_model_to_an_empty_machine(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    """nbo build --export, then import and serve with a BentoML home that has never seen the
    model: the Bento alone must answer."""
    from serving.models import import_model

    import_model(model_dir, "8")
    archive = tmp_path / "nbo.bento"
    built = subprocess.run([sys.executable, "-m", "nbo", "build", "--export", str(archive)],
                           capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert built.returncode == 0, built.stderr
    assert archive.exists() and "built Bento nbo:" in built.stdout
    elsewhere = service_env(snapshot_dir, tmp_path, BENTOML_HOME=str(tmp_path / "elsewhere"))
    imported = subprocess.run([sys.executable, "-m", "bentoml", "import", str(archive)],
                              env=elsewhere, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    empty = tmp_path / "empty"
    empty.mkdir()  # not the project: the code must come from the Bento
    with serving(elsewhere, tmp_path / "bento.log", service="nbo:latest", cwd=empty) as url:
        ranked = ranks(url, snapshot_dir)
        assert ranked["model_version"] == "8" and ranked["offers"]
