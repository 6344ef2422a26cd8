"""Bad input answered with a clear 4xx on every route and every store, never a 500: moments
out of range, oversized numbers and bodies, bodies that are not JSON, ids the databases
cannot keep, methods the service does not serve."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_client import ADMIN_AUTH, AUTH, forget_bentoml_collectors
from starlette.testclient import TestClient
from store_backends import BOTH_DATABASES

ROUTES = {"/rank": {"customer_id": "c0000001"}, "/similar": {"product_id": "p00001"},
          "/newsletter": {"customers": ["c0000001"]},
          "/feedback": {"events": [{"customer_id": "c1", "product_id": "p00001",
                                    "action": "click"}]},
          "/events": {"events": [{"event_id": "e1", "customer_id": "c1",
                                  "product_id": "p00001", "event_type": "view"}]}}


def moment_body(route: str, moment: str) -> dict:
    body = ROUTES[route]
    if route == "/rank":
        return {**body, "context": {"now": moment}}
    if route in ("/feedback", "/events"):
        return {"events": [{**body["events"][0], "timestamp": moment}]}
    return {**body, "now": moment}


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00", "0001-01-01T00:02:01+00:40",
                                    "9999-12-31T23:00:00-05:00", "9999-06-01T00:00:00",
                                    "1969-12-31T23:59:59"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_moment_out_of_range_is_a_400(client: TestClient, route: str, moment: str) -> None:
    answer = client.post(route, json=moment_body(route, moment), headers=AUTH)
    assert answer.status_code == 400, answer.text


def test_moments_inside_the_range_are_served(client: TestClient) -> None:
    for route in ROUTES:
        answer = client.post(route, json=moment_body(route, "2199-12-31T23:00:00+00:00"),
                             headers=AUTH)
        assert answer.status_code == 200, (route, answer.text)


def test_a_huge_position_is_a_400(client: TestClient) -> None:
    event = {**ROUTES["/feedback"]["events"][0]}
    body = ('{"events": [{"customer_id": "c1", "product_id": "p00001", "action": "click", '
            '"position": 1' + "0" * 400 + "}]}")
    answer = client.post("/feedback", content=body, headers={
        **AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert client.post("/feedback", json={"events": [{**event, "position": 3}]},
                       headers=AUTH).status_code == 200


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("content_type", ["multipart/form-data", "text/plain",
                                          "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_json_is_a_415(client: TestClient, route: str,
                                          content_type: str) -> None:
    answer = client.post(route, content=b'{"customer_id": "c1"}', headers={
        **AUTH, "Content-Type": content_type})
    assert answer.status_code == 415, answer.text
    assert "application/json" in answer.json()["error"]


def test_an_empty_admin_post_needs_no_content_type(client: TestClient) -> None:
    assert client.post("/admin/reload", headers=ADMIN_AUTH).status_code == 200


@pytest.fixture
def small_bodies(service_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from serving.service import NboService

    monkeypatch.setenv("NBO_MAX_BODY_BYTES", "2000")
    with TestClient(NboService.to_asgi()) as http:
        yield http
    forget_bentoml_collectors()


def test_a_body_over_the_limit_is_a_413_with_or_without_a_length(
        small_bodies: TestClient) -> None:
    events = [{**ROUTES["/events"]["events"][0], "event_id": f"e{i}"} for i in range(40)]
    declared = small_bodies.post("/events", json={"events": events}, headers=AUTH)
    assert declared.status_code == 413 and "NBO_MAX_BODY_BYTES" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"customers": ['
        for i in range(300):
            yield f'"c{i:07d}",'.encode()
        yield b'"c1"]}'

    streamed = small_bodies.post("/newsletter", content=chunks(), headers={
        **AUTH, "Content-Type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert small_bodies.post("/events", json={"events": events[:2]},
                             headers=AUTH).status_code == 200


def test_trace_and_other_methods_are_refused(client: TestClient) -> None:
    for path in ("/rank", "/metrics", "/livez", "/", "/docs.json", "/admin/reload"):
        for method in ("TRACE", "CONNECT", "PATCH"):
            answer = client.request(method, path, headers=AUTH)
            assert answer.status_code == 405, (method, path, answer.text)


@BOTH_DATABASES
def test_ids_the_databases_cannot_keep_are_a_400_on_every_store(
        client: TestClient, consent_url: str) -> None:
    anonymous = client.post("/similar", json={"product_id": "p00001"}, headers=AUTH)
    assert anonymous.status_code == 200, anonymous.text  # no placeholder id reaches the store
    nul = "c\x00001"
    assert client.post("/rank", json={"customer_id": nul}, headers=AUTH).status_code == 400
    assert client.post("/feedback", json={"events": [{
        **ROUTES["/feedback"]["events"][0], "customer_id": nul}]},
        headers=AUTH).status_code == 400
    assert client.post("/events", json={"events": [{
        **ROUTES["/events"]["events"][0], "customer_id": nul}]},
        headers=AUTH).status_code == 400
    long_id = "c" * 129
    consent = {"consents": [{"purpose": "email", "granted": True}]}
    assert client.put(f"/consents/{long_id}", json=consent,
                      headers=ADMIN_AUTH).status_code == 400
    assert client.delete(f"/customers/{long_id}", headers=ADMIN_AUTH).status_code == 400
    assert client.put("/consents/c%00x", json=consent, headers=ADMIN_AUTH).status_code == 400
    assert client.delete("/customers/c1", params={"source": "s" * 65},
                         headers=ADMIN_AUTH).status_code == 400
    assert client.put("/consents/c1", json={**consent, "source": "s" * 65},
                      headers=ADMIN_AUTH).status_code == 400
    assert client.put("/consents/c1", json=consent, headers=ADMIN_AUTH).status_code == 200


def test_a_400_is_logged_without_a_traceback(client: TestClient,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        answer = client.post("/rank", json={"customer_id": ""}, headers=AUTH)
    assert answer.status_code == 400
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in
                                                          caplog.records]


def test_the_api_documents_declare_what_the_service_answers(client: TestClient) -> None:
    from importlib import metadata

    api = client.get("/docs.json").json()
    admin = client.get("/admin/openapi.json").json()
    assert api["info"]["title"] == "nbo" and api["info"]["version"] == metadata.version("nbo")
    assert admin["info"]["title"] == "nbo admin"
    rank = api["paths"]["/rank"]["post"]["responses"]
    assert {"400", "401", "413", "415", "429", "503"} <= set(rank)
    assert api["components"]["schemas"]["Error"]["properties"]["detail"]["type"] == "array"
    answer = rank["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["withheld"]["nullable"] is True
    assert "nullable" not in answer["properties"]["customer_id"]
    erase = admin["paths"]["/customers/{customer_id}"]["delete"]["responses"]
    assert "422" not in erase and {"400", "401"} <= set(erase) and "415" not in erase
    assert client.put("/consents/c1", content=b"{not json", headers={
        **ADMIN_AUTH, "Content-Type": "application/json"}).json()["error"]
