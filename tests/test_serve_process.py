"""One real ``bentoml serve`` process answering /rank and /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from free_ports import free_port
from store_backends import BOTH_DATABASES, ERASURE_KEY

from features.snapshot import load_snapshot
from serving import process
from serving.store import Store

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
        process.stop(server)


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
        declared = [line.split()[2] for line in metrics.splitlines()
                    if line.startswith("# TYPE nbo_")]
        assert len(declared) == len(set(declared)) and "nbo_model_loads_total" in declared, declared
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


def buyer_of(snapshot_dir: Path) -> str:
    state = load_snapshot(snapshot_dir).features.customer_state
    return str(state.loc[state["purchases"] > 3, "customer_id"].iloc[0])


def ranked(url: str, customer: str) -> dict:
    # a new connection per call, so calls spread over the workers
    answer = httpx.post(f"{url}/rank", json={"customer_id": customer, "k": 10},
                        headers={"X-API-Key": "k"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_two_workers_honour_events_and_erasure_on_the_next_request(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    from serving.models import import_model

    import_model(model_dir, "7")
    env = service_env(snapshot_dir, tmp_path, NBO_WORKERS="2")
    customer = buyer_of(snapshot_dir)
    with serving(env, tmp_path / "serve.log") as url:
        assert len(process.ready_workers(url, 2)) == 2
        top = ranked(url, customer)["offers"][0]["product_id"]
        posted = httpx.post(f"{url}/events", headers={"X-API-Key": "k"}, timeout=10, json={
            "events": [{"event_id": "p1", "customer_id": customer, "product_id": top,
                        "event_type": "purchase"}]})
        assert posted.status_code == 200 and posted.json()["stored"] == 1
        assert all(top not in [o["product_id"] for o in ranked(url, customer)["offers"]]
                   for _ in range(12))
        erased = httpx.delete(f"{url}/customers/{customer}", headers={"X-API-Key": "a"},
                              timeout=10)
        assert erased.status_code == 200, erased.text
        fallbacks = [ranked(url, customer)["fallback"] for _ in range(12)]
        assert all(f in ("popular", "popular_in_region") for f in fallbacks), fallbacks
    logged = (tmp_path / "serve.log").read_text()
    assert "path=/customers/{id}" in logged and f"/customers/{customer}" not in logged


@BOTH_DATABASES
def test_two_processes_on_one_store_share_events_consent_and_erasure(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path, consent_url: str) -> None:
    from serving.models import import_model

    import_model(model_dir, "7")
    env = service_env(snapshot_dir, tmp_path, NBO_WORKERS="1", NBO_CONSENT_DB_URL=consent_url)
    customer = buyer_of(snapshot_dir)
    with serving(env, tmp_path / "one.log") as one, serving(env, tmp_path / "two.log") as two:
        top = ranked(two, customer)["offers"][0]["product_id"]
        httpx.post(f"{one}/events", headers={"X-API-Key": "k"}, timeout=10, json={
            "events": [{"event_id": "p1", "customer_id": customer, "product_id": top,
                        "event_type": "purchase"}]}).raise_for_status()
        assert top not in [o["product_id"] for o in ranked(two, customer)["offers"]]
        httpx.put(f"{one}/consents/{customer}", headers={"X-API-Key": "a"}, timeout=10,
                  json={"consents": [{"purpose": "personalization", "granted": False}]}
                  ).raise_for_status()
        assert ranked(two, customer)["fallback"] == "non_personalised"
        httpx.put(f"{one}/consents/{customer}", headers={"X-API-Key": "a"}, timeout=10,
                  json={"consents": [{"purpose": "personalization", "granted": True}]}
                  ).raise_for_status()
        assert ranked(two, customer)["fallback"] is None
        httpx.delete(f"{one}/customers/{customer}", headers={"X-API-Key": "a"},
                     timeout=10).raise_for_status()
        assert ranked(two, customer)["fallback"] in ("popular", "popular_in_region")


def test_two_workers_never_serve_an_offer_past_its_budget(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from serving.models import import_model

    import_model(model_dir, "7")
    policy = tmp_path / "policy.yaml"
    env = service_env(snapshot_dir, tmp_path, NBO_WORKERS="2", NBO_POLICY_FILE=str(policy))
    customer = buyer_of(snapshot_dir)
    policy.write_text("version: none\n")
    with serving(env, tmp_path / "serve.log") as url:
        top = ranked(url, customer)["offers"][0]["product_id"]
    policy.write_text(f"version: capped\nbudgets:\n  - {{name: cap, offers: [{top}], "
                      "limit: 7}\n")
    with serving(env, tmp_path / "capped.log") as url:
        assert len(process.ready_workers(url, 2)) == 2
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: ranked(url, customer), range(60)))
        budgets = httpx.get(f"{url}/admin/budgets", headers={"X-API-Key": "a"},
                            timeout=10).json()["budgets"]
    assert {a["policy_version"] for a in answers} == {"capped"}
    served = sum(top in [o["product_id"] for o in a["offers"]] for a in answers)
    assert served == 7 and (budgets[0]["used"], budgets[0]["left"]) == (7, 0)


def test_no_acknowledged_event_is_lost_when_the_service_is_killed(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> None:
    """kill -9 in the middle of a stream of /events calls: every acknowledged event is in
    the store after the restart, and the retried calls are stored once."""
    from serving.models import import_model

    import_model(model_dir, "7")
    env = service_env(snapshot_dir, tmp_path, NBO_WORKERS="1")
    customer = buyer_of(snapshot_dir)
    product = str(load_snapshot(snapshot_dir).products["product_id"].iloc[0])
    acknowledged: list[str] = []
    calls: list[list[dict]] = []
    port = free_port()
    log = tmp_path / "serve.log"
    server = process.start(port, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(server, url, log)
        killer = threading.Timer(3.0, lambda: process.stop(server, signal.SIGKILL))
        killer.start()
        for call in range(100_000):
            events = [{"event_id": f"k{call}-{i}", "customer_id": customer,
                       "product_id": product, "event_type": "view"} for i in range(50)]
            calls.append(events)
            try:
                answer = httpx.post(f"{url}/events", json={"events": events},
                                    headers={"X-API-Key": "k"}, timeout=10)
            except httpx.HTTPError:
                break  # killed mid-call: this one was not acknowledged
            assert answer.status_code == 200, answer.text
            acknowledged += [e["event_id"] for e in events]
        killer.join()
    finally:
        process.stop(server, signal.SIGKILL)
    assert acknowledged, "the service was killed before any call was answered"
    store = Store(env["NBO_CONSENT_DB_URL"], ERASURE_KEY)
    stored = set(_event_ids(store))
    assert set(acknowledged) <= stored, f"{len(set(acknowledged) - stored)} acknowledged lost"
    with serving(env, tmp_path / "again.log") as again:
        for events in calls[-3:]:  # the call cut short and two acknowledged ones, again
            retried = httpx.post(f"{again}/events", json={"events": events},
                                 headers={"X-API-Key": "k"}, timeout=10)
            assert retried.status_code == 200, retried.text
    ids = _event_ids(store)
    assert len(ids) == len(set(ids))  # each stored once
    assert {e["event_id"] for c in calls[-3:] for e in c} <= set(ids)
    store.close()


def _event_ids(store: Store) -> list[str]:
    from sqlalchemy import select

    from serving.store import events

    with store.engine.connect() as db:
        return [row.event_id for row in db.execute(select(events.c.event_id))]


def test_two_workers_serve_an_experiment_started_while_running_to_the_simulator(
        model_dir: Path, saved_model: Any, snapshot_dir: Path, shop: Path,
        tmp_path: Path) -> None:
    """An experiment started in the store is taken up by both workers within
    NBO_RELOAD_SECONDS; 'nbo simulate' drives them over HTTP; every customer's lists carry
    one arm and that arm's model version, whichever worker answered."""
    import time
    from datetime import timedelta

    from typer.testing import CliRunner

    from nbo.cli import app
    from serving.experiments import ARM_MODEL_NAME, Arm, Experiment
    from serving.models import import_model

    champion = import_model(model_dir, "7")
    popular = import_model(saved_model("popularity", {}), "8", ARM_MODEL_NAME)
    env = service_env(snapshot_dir, tmp_path, NBO_WORKERS="2", NBO_RELOAD_SECONDS="1")
    now = load_snapshot(snapshot_dir).now.to_pydatetime()
    store = Store(env["NBO_CONSENT_DB_URL"], ERASURE_KEY)
    try:
        with serving(env, tmp_path / "serve.log") as url:
            assert len(process.ready_workers(url, 2)) == 2
            store.add_experiment(Experiment("live", (Arm("pop", 50, popular, "8"),
                                                     Arm("als", 50, champion, "7"))))
            store.move_experiment("live", "running", now)
            time.sleep(3)  # both workers' watchers take it up
            simulated = CliRunner().invoke(app, [
                "simulate", "--customers", "80", "--days", "2", "--url", url, "--shop",
                str(shop), "--key", "k", "--start", (now + timedelta(hours=1)).isoformat()])
            assert simulated.exit_code == 0, simulated.output
            assert "160 rankings" in simulated.output
            time.sleep(1.5)  # the workers' decision logs write every half second
            made = httpx.get(f"{url}/admin/experiments/live", headers={"X-API-Key": "a"},
                             timeout=30)
            assert made.status_code == 200, made.text
        shown = store.decisions_frame("live")
        assert shown["request_id"].nunique() >= 160
        experiment = store.experiment("live")
        versions = {"pop": "8", "als": "7"}
        for _, lists in shown.groupby("token"):
            assert lists["arm"].nunique() == 1
            assert set(lists["model_version"]) == {versions[lists["arm"].iloc[0]]}
        assert sum(row["customers"] for row in made.json()["report"]["arms"]) == 80
        assert {arm.name for arm in experiment.arms} == set(shown["arm"])
    finally:
        store.close()
