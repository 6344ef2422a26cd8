"""The marketer console and the customer export, in-process: logins and sessions, CSRF, the
pages' content, a consent change and an erasure through the admin code, the access report,
and the API page. The same flows in a real browser are in test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_client import ADMIN, ADMIN_AUTH, AUTH, KEY, forget_bentoml_collectors
from starlette.testclient import TestClient

from serving.access import SCHEMA
from serving.policy import RULES


@pytest.fixture
def browser(service_env: Path) -> Iterator[TestClient]:
    """The service as a browser reaches it: over HTTPS (the cookie is Secure)."""
    from serving.service import NboService

    with TestClient(NboService.to_asgi(), base_url="https://testserver",
                    follow_redirects=False) as http:
        yield http
    forget_bentoml_collectors()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form token"
    return found.group(1)


def log_in(http: TestClient, key: str = ADMIN) -> TestClient:
    form = http.get("/console/login")
    answer = http.post("/console/login", data={"key": key, "csrf": csrf_of(form.text)})
    assert answer.status_code == 303, answer.text
    return http


def test_a_login_with_an_admin_key_sets_a_guarded_session_cookie(browser: TestClient) -> None:
    form = browser.get("/console/login")
    answer = browser.post("/console/login", data={"key": ADMIN, "csrf": csrf_of(form.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/customer"
    cookie = next(c for c in answer.headers.get_list("set-cookie")
                  if c.startswith("nbo_console="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
    page = browser.get("/console/customer")
    assert page.status_code == 200 and "Look up" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("key", ["wrong-key", KEY], ids=["wrong key", "API key"])
def test_a_wrong_or_non_admin_key_is_refused(browser: TestClient, key: str) -> None:
    form = browser.get("/console/login")
    answer = browser.post("/console/login", data={"key": key, "csrf": csrf_of(form.text)})
    assert answer.status_code == 401 and "not an admin key" in answer.text
    assert not any(c.startswith("nbo_console=") for c in answer.headers.get_list("set-cookie"))
    assert browser.get("/console/customer").headers["location"] == "/console/login"


def test_a_login_without_the_forms_token_is_refused(browser: TestClient) -> None:
    browser.get("/console/login")
    answer = browser.post("/console/login", data={"key": ADMIN, "csrf": "forged"})
    assert answer.status_code == 403
    assert browser.get("/console/customer").status_code == 303


def test_pages_need_a_session_and_logout_ends_it_in_the_store(browser: TestClient) -> None:
    for path in ("/console/customer", "/console/offers", "/console/models",
                 "/console/experiments", "/console/customer/export?id=x"):
        assert browser.get(path).headers["location"] == "/console/login", path
    log_in(browser)
    kept = browser.cookies.get("nbo_console")
    page = browser.get("/console/models")
    assert page.status_code == 200
    assert browser.post("/console/logout", data={"csrf": csrf_of(page.text)}
                        ).status_code == 303
    assert "nbo_console" not in browser.cookies  # the browser forgets it
    replayed = browser.get("/console/models", headers={"Cookie": f"nbo_console={kept}"})
    assert replayed.headers["location"] == "/console/login"  # and the store ended it


def test_the_customer_page_shows_each_channel_with_reasons_and_the_removed_offers(
        browser: TestClient, people: dict) -> None:
    log_in(browser)
    page = browser.get("/console/customer", params={"id": people["buyer"]})
    assert page.status_code == 200, page.text
    html = page.text
    for channel in ("web", "app", "email", "sms", "push", "post"):
        assert f'id="channel-{channel}"' in html
    reasons = re.findall(r'<td class="reason">([^<]+)</td>', html)
    assert reasons and all(reason.strip() for reason in reasons)
    removed = re.findall(r'<span class="rule">([^<]+)</span>', html)
    assert removed and set(removed) <= set(RULES)
    assert "exclusion" in removed  # a buyer's bought offers are taken by the exclusion rule
    assert 'id="mail"' in html and 'class="mail-block"' in html and 'class="mail-price"' in html
    assert 'id="consent-email"' in html and "Lifecycle stage" in html


def test_a_customer_nobody_knows_is_shown_with_what_the_fallbacks_serve(
        browser: TestClient) -> None:
    log_in(browser)
    page = browser.get("/console/customer", params={"id": "someone-new"})
    assert page.status_code == 200
    assert "no (fallbacks serve them)" in page.text and '<td id="stage">prospect</td>' in page.text
    assert "fallback: popular" in page.text
    assert browser.get("/console/customer", params={"id": "bad\x01id"}).status_code == 400


def test_the_preview_logs_nothing_and_takes_nothing_from_budgets(
        browser: TestClient, people: dict) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    buyer = people["buyer"]
    offers = [o["product_id"] for o in browser.post(
        "/rank", json={"customer_id": people["no_email"], "k": 20}, headers=AUTH
    ).json()["offers"]]
    assert browser.put("/admin/policy", headers=admin, json={"budgets": [
        {"name": "watched", "offers": offers, "limit": 1000}]}).status_code == 200

    def used() -> int:
        return browser.get("/admin/budgets", headers=admin).json()["budgets"][0]["used"]

    log_in(browser)
    assert browser.get("/console/customer", params={"id": buyer}).status_code == 200
    assert used() == 0
    exported = browser.get(f"/customers/{buyer}/export", headers=admin).json()
    assert exported["decisions"] == []  # the export flushes this worker's log first
    assert browser.post("/rank", json={"customer_id": buyer}, headers=AUTH).status_code == 200
    assert used() > 0
    assert browser.get(f"/customers/{buyer}/export", headers=admin).json()["decisions"]


def test_withdrawing_email_consent_withholds_the_mail(browser: TestClient, people: dict) -> None:
    log_in(browser)
    buyer = people["buyer"]
    page = browser.get("/console/customer", params={"id": buyer})
    assert 'id="mail"' in page.text
    forged = browser.post("/console/customer/consent", data={
        "csrf": "forged", "id": buyer, "purpose": "email", "granted": "no"})
    assert forged.status_code == 403
    assert 'id="mail"' in browser.get("/console/customer", params={"id": buyer}).text
    done = browser.post("/console/customer/consent", data={
        "csrf": csrf_of(page.text), "id": buyer, "purpose": "email", "granted": "no"})
    assert done.status_code == 303
    page = browser.get(done.headers["location"])
    assert 'id="no-mail"' in page.text and "no e-mail consent" in page.text
    assert re.search(r"<td>email</td>\s*<td>withdrawn</td>\s*<td>granted</td>\s*<td>console</td>",
                     page.text)
    letters = browser.post("/newsletter", json={"customers": [buyer]}, headers=AUTH).json()
    assert letters["letters"][0]["no_mail"] == "no e-mail consent with double opt-in"


def test_erasure_needs_the_id_typed_again_and_then_forgets_everywhere(
        browser: TestClient, people: dict) -> None:
    log_in(browser)
    buyer = people["buyer"]
    confirm = browser.get("/console/customer/erase", params={"id": buyer})
    token = csrf_of(confirm.text)
    wrong = browser.post("/console/customer/erase",
                         data={"csrf": token, "id": buyer, "confirm": buyer + "x"})
    assert wrong.status_code == 400 and 'id="mismatch"' in wrong.text
    assert browser.get(f"/customers/{buyer}/export", headers=ADMIN_AUTH | {
        "Authorization": f"Bearer {ADMIN}"}).status_code == 200
    done = browser.post("/console/customer/erase",
                        data={"csrf": token, "id": buyer, "confirm": buyer})
    assert done.status_code == 200 and 'id="erased"' in done.text
    assert 'id="customer-erased"' in browser.get("/console/customer", params={"id": buyer}).text
    gone = browser.get(f"/customers/{buyer}/export", headers={"Authorization": f"Bearer {ADMIN}"})
    assert gone.status_code == 410 and gone.json() == {"customer_id": buyer, "erased": True}
    ranked = browser.post("/rank", json={"customer_id": buyer}, headers=AUTH).json()
    assert ranked["fallback"] is not None


def test_the_export_holds_everything_and_each_decision_with_its_reason(
        browser: TestClient, people: dict) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    buyer = people["buyer"]
    ranked = browser.post("/rank", json={"customer_id": buyer, "k": 3}, headers=AUTH).json()
    shown = ranked["offers"][0]
    assert browser.post("/feedback", headers=AUTH, json={"events": [{
        "customer_id": buyer, "product_id": shown["product_id"], "action": "click",
        "request_id": ranked["request_id"], "channel": "web"}]}).status_code == 200
    assert browser.put(f"/consents/{buyer}", headers=admin, json={
        "consents": [{"purpose": "sms", "granted": True}], "source": "test"}).status_code == 200
    made = browser.get(f"/customers/{buyer}/export", headers=admin)
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["schema"] == SCHEMA and body["customer_id"] == buyer
    assert body["generated_at"].endswith("Z")  # RFC 3339, as the schema says
    assert all(d["decided_at"].endswith("Z") for d in body["decisions"])
    assert {c["purpose"] for c in body["consents"]} >= {"email", "sms", "personalization"}
    assert body["consent_trail"][-1]["source"] == "test"
    assert body["feedback"][0]["action"] == "click"
    assert body["state"]["known"] and body["state"]["bought"]
    assert body["model"]["known"] and body["model"]["history"]
    decision = next(d for d in body["decisions"] if d["request_id"] == ranked["request_id"])
    assert decision["rules"] == list(RULES)
    assert [(o["product_id"], o["reason"]) for o in decision["offers"]] == [
        (o["product_id"], o["reason"]) for o in ranked["offers"]]
    assert browser.get(f"/customers/{buyer}/export", headers=AUTH).status_code == 401


def test_the_console_export_button_downloads_the_same_report(browser: TestClient,
                                                             people: dict) -> None:
    log_in(browser)
    ranked = browser.post("/rank", json={"customer_id": people["buyer"]}, headers=AUTH).json()
    made = browser.get("/console/customer/export", params={"id": people["buyer"]})
    assert made.status_code == 200
    assert "attachment" in made.headers["content-disposition"]
    assert made.json()["customer_id"] == people["buyer"]
    # the list served a moment ago is in it: the worker's log is written out first
    assert [d["request_id"] for d in made.json()["decisions"]] == [ranked["request_id"]]


def test_offers_experiments_and_models_pages_show_their_content(browser: TestClient) -> None:
    log_in(browser)
    offers = browser.get("/console/offers")
    assert offers.status_code == 200 and offers.text.count("<tr>") > 10
    assert "Budget left" in offers.text
    models = browser.get("/console/models")
    assert "serving" in models.text and "nbo-ranker:" in models.text
    assert "No experiment yet" in browser.get("/console/experiments").text
    assert browser.get("/console/experiments/nothing-here").status_code == 404


def test_the_api_page_is_nbos_own_with_the_key_scheme_and_no_outside_script(
        browser: TestClient) -> None:
    from importlib import metadata

    page = browser.get("/")
    assert page.status_code == 200
    assert f"<title>nbo {metadata.version('nbo')} API</title>" in page.text
    sources = re.findall(r'<script[^>]*src="([^"]+)"', page.text)
    assert sources and all(src.startswith("/") for src in sources)
    assert "<script>" not in page.text and "googletagmanager" not in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
    for path in ("/docs.json", "/admin/openapi.json"):
        document = browser.get(path).json()
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearer"]["scheme"] == "bearer"
        assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        secured = [op for item in document["paths"].values() for op in item.values()
                   if "security" in op]
        assert secured, path
    assert browser.get("/console/static/api.js").status_code == 200


def test_the_lift_chart_places_each_interval_on_one_axis_through_zero() -> None:
    from serving.console.views import CHART_LEFT, CHART_RIGHT, CHART_WIDTH, lift_chart

    def lift(arm: str, low: float, mid: float, high: float) -> dict:
        return {"arm": arm, "metric": "clicks_per_customer", "relative": mid,
                "relative_low": low, "relative_high": high}

    bars, zero, height = lift_chart([lift("a", -0.2, 0.1, 0.4), lift("b", 0.1, 0.3, 0.6),
                                     lift("c", float("nan"), float("nan"), float("nan"))])
    assert [bar.label for bar in bars] == ["a: clicks", "b: clicks"]  # nothing to draw for c
    first, second = bars
    assert first.x_low == CHART_LEFT and second.x_high == CHART_WIDTH - CHART_RIGHT
    assert first.x_low < zero < first.x_mid < first.x_high
    assert zero < second.x_low  # an interval above zero starts right of it
    assert not first.excludes_zero and second.excludes_zero
    assert height == 2 * (second.y - first.y) and first.y < second.y
    below, _, _ = lift_chart([lift("d", -0.5, -0.3, -0.1)])
    assert below[0].excludes_zero  # a loss the interval is sure of is marked too
    above, zero, _ = lift_chart([lift("e", 0.2, 0.3, 0.4)])
    assert zero == CHART_LEFT < above[0].x_low  # the axis reaches zero even so
    assert lift_chart([]) == ([], CHART_LEFT, lift_chart([])[2])
