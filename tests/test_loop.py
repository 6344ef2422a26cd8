"""The loop into training: what the service takes in is exported into the dataset, and
``nbo retrain`` learns from it, gates, promotes and publishes; the running service's next
answer comes from the new model."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from service_client import forget_bentoml_collectors
from starlette.testclient import TestClient
from store_backends import ERASURE_KEY
from typer.testing import CliRunner

from nbo.cli import app
from serving.store import Store

pytestmark = pytest.mark.slow
ALS = {"factors": 8, "iterations": 5}


def test_events_and_feedback_reach_training_and_the_next_answer(
        shop: Path, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    from features.snapshot import build_snapshot, load_snapshot
    from nbo.jobs.champion import publish_champion
    from training.pipeline import prepare, train
    from training.tracking import promote, use_tracking

    dataset = tmp_path / "dataset"
    shutil.copytree(shop, dataset)
    build_snapshot(dataset, tmp_path / "first")
    first = load_snapshot(tmp_path / "first")
    client = use_tracking(f"sqlite:///{isolated_home / 'mlflow.db'}")
    train(prepare(tmp_path / "first"), "als", ALS)
    assert promote(client).promoted
    publish_champion(client)

    later = first.now + pd.Timedelta(days=31)  # the service runs a month on
    consent_url = f"sqlite:///{isolated_home / 'consent.db'}"
    for name, value in {"NBO_API_KEYS": "k", "NBO_ADMIN_API_KEYS": "a",
                        "NBO_CONSENT_DB_URL": consent_url, "NBO_RELOAD_SECONDS": "0",
                        "NBO_NOW": later.isoformat()}.items():
        monkeypatch.setenv(name, value)
    products = first.products["product_id"].astype(str).tolist()
    from serving.service import NboService

    with TestClient(NboService.to_asgi()) as service:
        events = [{"event_id": f"f{i}", "customer_id": "fresh", "product_id": products[i],
                   "event_type": "purchase",
                   "timestamp": (later - timedelta(hours=i + 1)).isoformat()}
                  for i in range(4)]
        known = first.features.customer_state["customer_id"].astype(str).tolist()[:20]
        events += [{"event_id": f"k{i}", "customer_id": customer, "product_id": products[-i],
                    "event_type": "purchase", "timestamp": (later - timedelta(days=2)).isoformat()}
                   for i, customer in enumerate(known, start=1)]  # so the new split has a test
        assert service.post("/events", json={"events": events},
                            headers={"X-API-Key": "k"}).json()["stored"] == 24
        before = service.post("/rank", json={"customer_id": "fresh"},
                              headers={"X-API-Key": "k"}).json()
        assert before["fallback"] is None  # live: ranked from what they bought just now
        service.post("/feedback", headers={"X-API-Key": "k"}, json={"events": [
            {"customer_id": "fresh", "product_id": before["offers"][0]["product_id"],
             "action": "click", "request_id": before["request_id"]}]}).raise_for_status()

        runner = CliRunner()
        result = runner.invoke(app, ["retrain", str(dataset), "--snapshot",
                                     str(tmp_path / "second")])
        assert result.exit_code == 0, result.output  # promoted
        assert "promoted" in result.output or "now the champion" in result.output
        reloaded = service.post("/admin/reload", headers={"X-API-Key": "a"}).json()
        assert reloaded["model_version"] != before["model_version"]
        after = service.post("/rank", json={"customer_id": "fresh"},
                             headers={"X-API-Key": "k"}).json()
        assert after["model_version"] == reloaded["model_version"]
        assert not set(products[:4]) & {o["product_id"] for o in after["offers"]}
        from serving import models

        engine = models.CURRENT.engine  # type: ignore[union-attr]
        assert engine.model.customers.row("fresh") >= 0  # learnt, no longer only live
    forget_bentoml_collectors()

    second = load_snapshot(tmp_path / "second")
    assert (second.events["customer_id"] == "fresh").sum() == 4
    assert (second.feedback["customer_id"] == "fresh").sum() == 1
    again = runner.invoke(app, ["store", "export", str(dataset)])
    assert again.exit_code == 0 and "exported 0 events and 0 feedback" in again.output
    store = Store(consent_url, ERASURE_KEY)
    assert store.bookmark(f"export:{dataset.resolve()}:events") == 24
    store.close()
