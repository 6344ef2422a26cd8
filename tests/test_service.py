"""The service over in-process HTTP (``to_asgi()``): auth, every endpoint, validation,
consent changes effective on the next call, erasure, model reloads."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest
from service_client import ADMIN, ADMIN_AUTH, AUTH, forget_bentoml_collectors
from starlette.testclient import TestClient
from store_backends import BOTH_DATABASES, ERASURE_KEY


def test_every_endpoint_but_health_and_metrics_needs_a_key(client: TestClient) -> None:
    body = {"customer_id": "c0000001"}
    refused = [client.post("/rank", json=body),
               client.post("/rank", json=body, headers={"Authorization": "Bearer wrong"}),
               client.post("/rank", json=body, headers={"X-API-Key": ADMIN}),
               client.put("/consents/c1", json={"consents": [
                   {"purpose": "email", "granted": True}]}, headers=AUTH),
               client.delete("/customers/c1", headers=AUTH)]
    for response in refused:
        assert response.status_code == 401
        assert response.json() == {"error": "missing or invalid API key"}
    assert client.post("/rank", json=body, headers={"X-API-Key": "another-key"}).status_code == 200
    for path in ("/livez", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200


def test_rank_answers_the_designed_shape(client: TestClient, people: dict) -> None:
    response = client.post("/rank", json={"customer_id": people["buyer"], "k": 7}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"request_id", "model_version", "customer_id", "lifecycle_stage",
                         "fallback", "offers"}
    assert body["model_version"] == "1" and body["fallback"] is None
    offers = body["offers"]
    assert 0 < len(offers) <= 7
    assert [o["rank"] for o in offers] == list(range(1, len(offers) + 1))
    assert len({o["product_id"] for o in offers}) == len(offers)
    assert all(o["reason"] and o["title"] for o in offers)


@pytest.mark.parametrize("body", [
    {"customer_id": "c1", "k": 0},
    {"customer_id": "c1", "channel": "fax"},
    {"customer_id": ""},
    {"k": 3},
    {"customer_id": "c1", "context": {"cart": ["no-such-product"]}},
    {"customer_id": "c1", "context": {"unknown_field": 1}},
])
def test_caller_mistakes_are_4xx_json_objects(client: TestClient, body: dict) -> None:
    response = client.post("/rank", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert isinstance(response.json(), dict) and response.json()["error"]
    assert "Traceback" not in response.text


@BOTH_DATABASES
def test_a_consent_change_is_effective_on_the_next_request(client: TestClient,
                                                          people: dict, consent_url: str
                                                          ) -> None:
    customer = people["buyer"]
    before = client.post("/rank", json={"customer_id": customer}, headers=AUTH).json()
    assert before["fallback"] is None
    change = client.put(f"/consents/{customer}", headers=ADMIN_AUTH, json={
        "consents": [{"purpose": "personalization", "granted": False}], "source": "crm"})
    assert change.status_code == 200, change.text
    assert change.json()["changes"][0]["previous"] == "granted"
    after = client.post("/rank", json={"customer_id": customer}, headers=AUTH).json()
    assert after["fallback"] == "non_personalised"
    from serving.store import Store

    trail = Store(consent_url, ERASURE_KEY).consent_trail(customer)
    assert trail[["purpose", "granted", "previous", "source"]].values.tolist() == [
        ["personalization", False, "granted", "crm"]]
    assert all("because you" not in o["reason"] for o in after["offers"])


def test_messaging_channels_need_their_consent(client: TestClient, people: dict) -> None:
    body = client.post("/rank", json={"customer_id": people["no_email"], "channel": "email"},
                       headers=AUTH).json()
    assert body["offers"] == [] and "e-mail consent" in body["withheld"]
    letter = client.post("/newsletter", json={"customers": [people["no_email"]]},
                         headers=AUTH).json()["letters"][0]
    assert letter["blocks"] == [] and "e-mail consent" in letter["no_mail"]


def test_newsletter_blocks_are_distinct_and_capped(client: TestClient, people: dict) -> None:
    response = client.post("/newsletter", json={"customers": [people["buyer"], "stranger"]},
                           headers=AUTH)
    assert response.status_code == 200, response.text
    buyer, stranger = response.json()["letters"]
    products = [b["product_id"] for b in buyer["blocks"]]
    assert products and len(products) == len(set(products))
    assert stranger["no_mail"] == "unknown customer"
    too_many = client.post("/newsletter", json={"customers": [f"c{i}" for i in range(1001)]},
                           headers=AUTH)
    assert too_many.status_code == 400


def test_offers_shown_without_a_click_rest(client: TestClient, people: dict) -> None:
    customer = people["buyer"]
    first = client.post("/rank", json={"customer_id": customer}, headers=AUTH).json()
    top = first["offers"][0]["product_id"]
    events = [{"customer_id": customer, "product_id": top, "action": "impression",
               "channel": "web", "request_id": f"{first['request_id']}-{n}", "position": 1}
              for n in range(3)]  # shown in three lists
    stored = client.post("/feedback", json={"events": events}, headers=AUTH)
    assert stored.status_code == 200 and stored.json()["stored"] == 3
    retried = client.post("/feedback", json={"events": events}, headers=AUTH).json()
    assert (retried["stored"], retried["duplicates"]) == (0, 3)  # a retry is stored once
    again = client.post("/rank", json={"customer_id": customer}, headers=AUTH).json()
    assert top not in [o["product_id"] for o in again["offers"]]
    bad = client.post("/feedback", json={"events": [{**events[0], "action": "liked"}]},
                      headers=AUTH)
    assert bad.status_code == 400


def test_similar_offers_exclude_the_product_itself(client: TestClient, model_dir: Path) -> None:
    product = json.loads((model_dir / "items.json").read_text())[0]
    body = client.post("/similar", json={"product_id": product, "k": 5}, headers=AUTH).json()
    assert 0 < len(body["offers"]) <= 5
    assert product not in [o["product_id"] for o in body["offers"]]
    missing = client.post("/similar", json={"product_id": "nope"}, headers=AUTH)
    assert missing.status_code == 400


@BOTH_DATABASES
def test_erasure_removes_the_customer_everywhere(client: TestClient, people: dict,
                                                 consent_url: str) -> None:
    customer = people["buyer"]
    client.post("/feedback", headers=AUTH, json={"events": [
        {"customer_id": customer, "product_id": "p00001", "action": "click"}]})
    response = client.delete(f"/customers/{customer}", headers=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    removed = response.json()["removed"]
    assert removed["consents"] > 0 and removed["feedback"] == 1 and removed["model_rows"] == 1
    after = client.post("/rank", json={"customer_id": customer}, headers=AUTH).json()
    assert after["fallback"] in ("popular", "popular_in_region")
    letter = client.post("/newsletter", json={"customers": [customer]}, headers=AUTH).json()
    assert letter["letters"][0]["no_mail"] == "erased"
    from serving.store import Store, metadata

    store = Store(consent_url, ERASURE_KEY)
    with store.engine.connect() as db:  # nothing kept in clear, in any table
        held = [row for table in metadata.sorted_tables for row in db.execute(table.select())]
    store.close()
    assert held and not any(customer in map(str, row) for row in held)


@BOTH_DATABASES
def test_an_erased_customer_who_consents_again_is_a_new_customer(
        client: TestClient, people: dict, consent_url: str) -> None:
    customer = people["buyer"]
    assert client.delete(f"/customers/{customer}", headers=ADMIN_AUTH).status_code == 200
    consent = {"consents": [{"purpose": "email", "granted": True, "double_opt_in": True},
                            {"purpose": "personalization", "granted": True}],
               "source": "signup"}
    assert client.put(f"/consents/{customer}", json=consent,
                      headers=ADMIN_AUTH).status_code == 200
    letter = client.post("/newsletter", json={"customers": [customer]}, headers=AUTH).json()
    assert letter["letters"][0]["no_mail"] is None and letter["letters"][0]["blocks"]
    event = {"event_id": "back-1", "customer_id": customer, "product_id": "p00001",
             "event_type": "view", "timestamp": "2026-06-29T10:00:00"}
    assert client.post("/events", json={"events": [event]},
                       headers=AUTH).json()["stored"] == 1
    removed = client.delete(f"/customers/{customer}", headers=ADMIN_AUTH).json()["removed"]
    assert removed["consents"] == 2 and removed["events"] == 1
    letter = client.post("/newsletter", json={"customers": [customer]}, headers=AUTH).json()
    assert letter["letters"][0]["no_mail"] == "erased"


def test_metrics_count_served_offers_and_filters(client: TestClient, people: dict) -> None:
    client.post("/rank", json={"customer_id": people["buyer"]}, headers=AUTH)
    text = client.get("/metrics").text
    assert "nbo_served_offers_total" in text and 'endpoint="rank"' in text
    assert 'nbo_gc_pause_seconds_count{generation="2"}' in text
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE nbo_")]
    assert len(declared) == len(set(declared)) and "nbo_model_loads_total" in declared, declared


def test_garbage_collections_are_timed_by_generation() -> None:
    from serving.metrics import CollectionPauses

    pauses = CollectionPauses()
    pauses.start()
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(pauses.on_collection)
    assert sum(pauses.counts[2]) == 1
    assert 0 < pauses.longest[2] == pauses.seconds[2]


def test_answered_requests_leave_no_tracing_spans_alive(client: TestClient,
                                                        people: dict) -> None:
    """BentoML's request timer keeps each request's context alive for the whole timeout; with
    tracing off there is no span in it, so a busy server holds few objects and its garbage
    collections stay short."""
    from opentelemetry.sdk.trace import Span

    from serving.service import NboService

    assert NboService.config["traffic"]["timeout"] == 10.0
    for _ in range(20):
        client.post("/rank", json={"customer_id": people["buyer"]}, headers=AUTH)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Span)]


def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(
        client: TestClient, model_dir: Path, tmp_path: Path, people: dict) -> None:
    from serving.models import import_model

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "arrays.npz").write_bytes(b"not an archive")
    import_model(broken, "2")
    reload = client.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert "refused" in reload["message"] and reload["model_version"] == "1"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "1"
    assert ready.json()["refused"]
    ranked = client.post("/rank", json={"customer_id": people["buyer"]}, headers=AUTH)
    assert ranked.status_code == 200 and ranked.json()["model_version"] == "1"
    import_model(model_dir, "3")
    assert "serving" in client.post("/admin/reload", headers=ADMIN_AUTH).json()["message"]
    assert client.post("/rank", json={"customer_id": people["buyer"]},
                       headers=AUTH).json()["model_version"] == "3"


def test_a_model_with_one_bad_customer_row_is_refused(client: TestClient, model_dir: Path,
                                                      tmp_path: Path) -> None:
    """The health check scores every customer, not only the first."""
    import numpy as np

    from serving.models import import_model

    broken = tmp_path / "one-bad-row"
    shutil.copytree(model_dir, broken)
    with np.load(broken / "arrays.npz") as stored:
        arrays = dict(stored)
    arrays["user_factors"][len(arrays["user_factors"]) // 2] = np.nan
    np.savez(broken / "arrays.npz", **arrays)
    tag = import_model(broken, "2")
    reload = client.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert reload["model_version"] == "1"
    assert "non-finite scores to 1 customers" in reload["refused"][tag]
    ready = client.get("/readyz").json()
    assert ready["newer_refused"] == [tag] and ready["checked_seconds"] >= 0


def test_a_store_entry_whose_copy_was_cut_short_is_refused(client: TestClient,
                                                          model_dir: Path) -> None:
    """BentoML copies an entry into its store in place: a copy killed half way leaves
    files short, or no model.yaml at all."""
    import bentoml

    from serving.models import import_model

    tag = import_model(model_dir, "2")
    arrays = Path(bentoml.models.get(tag).path) / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    unfinished = Path(bentoml.models.get(tag).path).parent / "unfinished"
    shutil.copytree(model_dir, unfinished)  # its files, no model.yaml
    reload = client.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert reload["model_version"] == "1", reload
    assert "incomplete or changed: 1 of" in reload["refused"][tag]
    assert "model.yaml" in reload["refused"]["nbo-ranker:unfinished"]
    shutil.rmtree(unfinished)


def test_a_model_of_another_dataset_is_refused_by_a_store_that_serves_one(
        client: TestClient, model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.models import import_model

    for name in ("shop", "online-retail"):
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        (folder / "dataset.json").write_text(json.dumps({"dataset": name, "fingerprint": "f"}))
    import_model(tmp_path / "shop", "2")
    assert client.post("/admin/reload", headers=ADMIN_AUTH).json()["model_version"] == "2"
    other = import_model(tmp_path / "online-retail", "3")
    reload = client.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert reload["model_version"] == "2", reload
    assert "trained on dataset 'online-retail'" in reload["refused"][other]
    assert "serves 'shop'" in reload["refused"][other]


def test_a_broken_newest_model_does_not_keep_older_good_ones_from_serving(
        service_env: Path, model_dir: Path, tmp_path: Path, people: dict) -> None:
    from serving.models import import_model
    from serving.service import NboService

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "arrays.npz").write_bytes(b"not an archive")
    tag = import_model(broken, "2")
    with TestClient(NboService.to_asgi()) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["model_version"] == "1"
        assert ready.json()["newer_refused"] == [tag] and tag in ready.json()["refused"]
        ranked = http.post("/rank", json={"customer_id": people["buyer"]}, headers=AUTH)
        assert ranked.status_code == 200 and ranked.json()["model_version"] == "1"
    forget_bentoml_collectors()


def test_without_keys_the_service_refuses_to_start(service_env: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.service import NboService

    monkeypatch.setenv("NBO_API_KEYS", "")
    with pytest.raises(RuntimeError, match="no API keys"), TestClient(NboService.to_asgi()):
        pass
    forget_bentoml_collectors()


def test_without_an_erasure_key_the_service_refuses_to_start(
        service_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.service import NboService

    monkeypatch.delenv("NBO_ERASURE_KEY")
    with pytest.raises(ValueError, match="set NBO_ERASURE_KEY"), \
            TestClient(NboService.to_asgi()):
        pass
    forget_bentoml_collectors()


def test_a_worker_sheds_requests_beyond_its_limit_instead_of_queueing() -> None:
    from features.settings import Settings
    from serving.service import NboService

    settings = Settings()
    traffic = NboService.config["traffic"]  # type: ignore[attr-defined]
    assert traffic["max_concurrency"] == settings.max_in_flight * settings.workers > 0
    assert NboService.config["workers"] == settings.workers  # type: ignore[attr-defined]
