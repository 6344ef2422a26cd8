"""One real ``bentoml serve`` process answering /rank and /metrics."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from features.snapshot import load_snapshot
from serving import process

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bentoml_serve_answers_rank_and_metrics(model_dir: Path, snapshot_dir: Path,
                                                tmp_path: Path) -> None:
    from serving.models import import_model

    import_model(model_dir, "7")
    port = free_port()
    env = {**os.environ, "NBO_API_KEYS": "k", "NBO_ADMIN_API_KEYS": "a",
           "NBO_CONSENT_DB_URL": f"sqlite:///{tmp_path / 'consent.db'}",
           "NBO_NOW": load_snapshot(snapshot_dir).now.isoformat(), "NBO_RELOAD_SECONDS": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets up its own
    log = tmp_path / "serve.log"
    server = process.start(port, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(server, url, log)
        customer = load_snapshot(snapshot_dir).features.customer_state["customer_id"].iloc[0]
        ranked = httpx.post(f"{url}/rank", json={"customer_id": customer, "k": 5},
                            headers={"X-API-Key": "k"}, timeout=10)
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()["model_version"] == "7" and ranked.json()["offers"]
        assert httpx.post(f"{url}/rank", json={"customer_id": customer},
                          timeout=10).status_code == 401
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'nbo_served_offers_total{endpoint="rank"}' in metrics
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
