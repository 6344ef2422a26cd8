"""The offer policy over HTTP: PUT and GET /admin/policy, every answer naming its version,
explained priorities, other workers taking it up from the store, the policy file at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_client import ADMIN_AUTH, AUTH, forget_bentoml_collectors
from starlette.testclient import TestClient
from store_backends import BOTH_DATABASES, ERASURE_KEY


def top(client: TestClient, customer: str, **body: object) -> dict:
    response = client.post("/rank", json={"customer_id": customer, **body}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


@BOTH_DATABASES
def test_a_put_policy_is_used_from_the_next_request_and_named_in_every_answer(
        client: TestClient, people: dict) -> None:
    buyer = people["buyer"]
    before = top(client, buyer)
    assert before["policy_version"].startswith("sha256:")  # no policy: relevance alone
    first = before["offers"][0]["product_id"]
    policy = {"version": "winter-2", "offers": {first: {"suppressed": True}},
              "channels": {"web": {"a": 1, "b": 0.5}}}
    assert client.put("/admin/policy", json=policy, headers=AUTH).status_code == 401
    put = client.put("/admin/policy", json=policy, headers=ADMIN_AUTH)
    assert put.status_code == 200, put.text
    assert put.json()["policy_version"] == "winter-2"
    after = top(client, buyer, explain=True)
    assert after["policy_version"] == "winter-2"
    assert first not in [o["product_id"] for o in after["offers"]]
    assert set(after["offers"][0]["components"]) == {"propensity", "value", "weight",
                                                     "context_weight"}
    shown = client.get("/admin/policy", headers=ADMIN_AUTH).json()
    assert shown["policy_version"] == "winter-2"
    assert shown["policy"]["offers"] == {first: {"suppressed": True}}
    similar = client.post("/similar", json={"product_id": first}, headers=AUTH).json()
    letters = client.post("/newsletter", json={"customers": [buyer]}, headers=AUTH).json()
    assert similar["policy_version"] == letters["policy_version"] == "winter-2"
    assert first not in [b["product_id"] for b in letters["letters"][0]["blocks"]]


@pytest.mark.parametrize(("policy", "said"), [
    ({"offers": {"no-such-offer": {"weight": 2}}}, "no-such-offer"),
    ({"channels": {"web": {"a": -1}}}, "channels.web.a"),
    ({"colour": "red"}, "colour"),
])
def test_a_bad_policy_is_refused_and_the_one_in_use_stays(
        client: TestClient, people: dict, policy: dict, said: str) -> None:
    assert client.put("/admin/policy", json={"version": "kept"},
                      headers=ADMIN_AUTH).status_code == 200
    refused = client.put("/admin/policy", json=policy, headers=ADMIN_AUTH)
    assert refused.status_code == 400 and said in refused.json()["error"]
    assert top(client, people["buyer"])["policy_version"] == "kept"


@BOTH_DATABASES
def test_another_worker_takes_the_policy_up_from_the_store(
        client: TestClient, people: dict, consent_url: str) -> None:
    from serving.engine import PolicySettings
    from serving.models import ModelHolder
    from serving.store import Store

    other = ModelHolder("nbo-ranker:latest", Store(consent_url, ERASURE_KEY), PolicySettings())
    other.sync_policy()
    other.refresh()
    assert other.engine is not None and other.engine.arbiter.version.startswith("sha256:")
    assert client.put("/admin/policy", json={"version": "shared"},
                      headers=ADMIN_AUTH).status_code == 200
    assert other.sync_policy() == "shared"
    assert other.engine.arbiter.version == "shared"


def test_the_policy_file_is_used_from_the_start_and_read_again_on_reload(
        service_env: Path, people: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.service import NboService

    file = service_env / "policy.yaml"
    file.write_text("version: from-file\n")
    monkeypatch.setenv("NBO_POLICY_FILE", str(file))
    with TestClient(NboService.to_asgi()) as http:
        assert top(http, people["buyer"])["policy_version"] == "from-file"
        file.write_text("version: edited\n")
        reloaded = http.post("/admin/reload", headers=ADMIN_AUTH)
        assert reloaded.json()["policy_version"] == "edited"
        assert top(http, people["buyer"])["policy_version"] == "edited"
        file.write_text("version: edited\nvalue: colour\n")
        refused = http.post("/admin/reload", headers=ADMIN_AUTH)
        assert refused.status_code == 400 and "value (line 2)" in refused.json()["error"]
        assert top(http, people["buyer"])["policy_version"] == "edited"
    forget_bentoml_collectors()
    file.write_text("channels: {web: {a: many}}\n")
    with pytest.raises(ValueError, match=r"channels\.web\.a"), TestClient(NboService.to_asgi()):
        pass
    forget_bentoml_collectors()


@BOTH_DATABASES
def test_budgets_count_impressions_and_conversions_once_and_show_what_is_left(
        client: TestClient, people: dict) -> None:
    buyer = people["buyer"]
    first = top(client, buyer)["offers"][0]["product_id"]
    second = top(client, buyer)["offers"][1]["product_id"]
    policy = {"budgets": [{"name": "shown", "offers": [first], "limit": 2},
                          {"name": "bought", "offers": [second], "limit": 1,
                           "counts": "conversions", "period": "week"}]}
    assert client.put("/admin/policy", json=policy, headers=ADMIN_AUTH).status_code == 200
    served = [first in [o["product_id"] for o in top(client, buyer)["offers"]]
              for _ in range(4)]
    assert served == [True, True, False, False]
    # another customer converts: the buyer's own purchase exclusion plays no part
    conversion = {"customer_id": "someone-else", "product_id": second, "action": "conversion",
                  "request_id": "r-1"}
    for _ in range(2):  # a retry is stored, and counted, once
        assert client.post("/feedback", json={"events": [conversion]},
                           headers=AUTH).status_code == 200
    budgets = client.get("/admin/budgets", headers=ADMIN_AUTH).json()["budgets"]
    assert [(b["name"], b["used"], b["left"]) for b in budgets] == [("shown", 2, 0),
                                                                    ("bought", 1, 0)]
    assert budgets[1]["current_period"].count("-W") == 1
    offered = [o["product_id"] for o in top(client, buyer)["offers"]]
    assert first not in offered and second not in offered
