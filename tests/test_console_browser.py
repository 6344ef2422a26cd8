"""The console in a real browser: Debian's Chromium driven by Selenium through the system
chromedriver, against a real ``bentoml serve``. Skipped where Chromium is not installed (a
fresh clone); ``.ci/run`` installs it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve_process import service_env, serving

from features.snapshot import load_snapshot
from nbo.jobs.browser import NoBrowser, chromium

pytestmark = pytest.mark.slow


@pytest.fixture
def served(model_dir: Path, snapshot_dir: Path, tmp_path: Path) -> Iterator[str]:
    from serving.models import import_model

    import_model(model_dir, "3")
    env = service_env(snapshot_dir, tmp_path, NBO_API_KEYS="ranking-key",
                      NBO_ADMIN_API_KEYS="admin-key-for-the-console")
    with serving(env, tmp_path / "serve.log") as url:
        yield url


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    try:
        browser = chromium(tmp_path / "profile", tmp_path / "downloads")
    except NoBrowser as missing:
        pytest.skip(str(missing))
    browser.implicitly_wait(15)  # a look-up waits for the page a click or a form led to
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def mailable_buyer(snapshot_dir: Path) -> str:
    """A buyer with e-mail consent and double opt-in: the newsletter has blocks for them."""
    snapshot = load_snapshot(snapshot_dir)
    consents = snapshot.consents
    mailable = set(consents.loc[(consents["purpose"] == "email") & consents["granted"]
                                & consents["double_opt_in"], "customer_id"])
    denied = set(consents.loc[(consents["purpose"] == "personalization")
                              & ~consents["granted"], "customer_id"])
    state = snapshot.features.customer_state.sort_values("purchases", ascending=False)
    return next(str(c) for c in state["customer_id"] if c in mailable and c not in denied)


def follow(driver: Any, element_id: str) -> None:
    """Click what leads to another page and return once the browser left this one: a click
    returns before the page it asked for arrives, and the old page's URL or headings would
    be read meanwhile."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The page is marked, and the wait ends when a loaded page without the mark shows. Asking
    # after the clicked element instead raced the navigation: Chrome answered "node does not
    # belong to the document" rather than "stale" when the old page was half torn down. A
    # question asked while the page changes may fail the same way, so such failures retry.
    driver.execute_script("document.documentElement.setAttribute('data-left', 'no')")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete'"
            " && !document.documentElement.hasAttribute('data-left')"))


def log_in(driver: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/console/login")
    driver.find_element(By.ID, "key").send_keys(key)
    follow(driver, "login")


def test_a_marketer_looks_up_withdraws_consent_exports_and_erases_in_a_browser(
        driver: Any, served: str, snapshot_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    customer = mailable_buyer(snapshot_dir)
    for refused in ("wrong-key", "ranking-key"):  # a wrong key, and a key of the API only
        log_in(driver, served, refused)
        assert "not an admin key" in driver.find_element(By.ID, "refused").text
        driver.get(f"{served}/console/customer")
        assert driver.current_url.endswith("/console/login")
    log_in(driver, served, "admin-key-for-the-console")
    assert driver.current_url.endswith("/console/customer")
    cookie = driver.get_cookie("nbo_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    driver.find_element(By.ID, "customer-id").send_keys(customer)
    follow(driver, "look-up")
    assert driver.find_element(By.ID, "customer").text == customer
    web = driver.find_element(By.ID, "channel-web")
    reasons = [cell.text for cell in web.find_elements(By.CSS_SELECTOR, "td.reason")]
    assert reasons and all(reasons), reasons
    rules = [rule.text.lower() for rule in web.find_elements(By.CSS_SELECTOR, ".rule")]
    assert "exclusion" in rules, rules  # what they bought is removed, and the page says why
    assert driver.find_elements(By.CSS_SELECTOR, "#mail .mail-block")

    follow(driver, "withdraw-email")
    assert "Consent to email changed" in driver.find_element(By.ID, "changed").text
    assert "no e-mail consent" in driver.find_element(By.ID, "no-mail").text
    assert "no e-mail consent" in driver.find_element(By.ID, "channel-email").text
    assert "console" in driver.find_element(By.ID, "trail").text

    driver.find_element(By.ID, "export").click()
    exported = tmp_path / "downloads" / "customer-export.json"
    deadline = time.monotonic() + 20
    while not exported.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    held = json.loads(exported.read_text())
    assert held["customer_id"] == customer and held["consent_trail"][-1]["source"] == "console"
    assert next(c for c in held["consents"] if c["purpose"] == "email")["granted"] is False

    follow(driver, "erase")
    driver.find_element(By.ID, "confirm").send_keys(customer)
    follow(driver, "erase-confirm")
    assert driver.find_element(By.ID, "erased").text == "Customer erased"
    follow(driver, "nav-customer")
    driver.find_element(By.ID, "customer-id").send_keys(customer)
    follow(driver, "look-up")
    assert "is erased" in driver.find_element(By.ID, "customer-erased").text
    gone = httpx.get(f"{served}/customers/{customer}/export", timeout=10,
                     headers={"Authorization": "Bearer admin-key-for-the-console"})
    assert gone.status_code == 410 and gone.json() == {"customer_id": customer, "erased": True}

    for page in ("offers", "experiments", "models"):
        follow(driver, f"nav-{page}")
        assert driver.find_element(By.TAG_NAME, "h1").text.lower() == page
    follow(driver, "logout")
    driver.get(f"{served}/console/models")
    assert driver.current_url.endswith("/console/login")
    violations = [entry["message"] for entry in driver.get_log("browser")
                  if "Content Security Policy" in entry["message"]]
    assert not violations, violations
    log = (tmp_path / "serve.log").read_text()
    assert "/console/customer" in log and customer not in log  # ids stay out of the log


def test_the_api_page_loads_only_its_own_scripts_and_offers_authorize(
        driver: Any, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{served}/docs")
    WebDriverWait(driver, 20).until(shown.presence_of_element_located(
        (By.CSS_SELECTOR, ".btn.authorize")))
    assert driver.title.startswith("nbo ") and driver.title.endswith(" API")
    title = driver.find_element(By.CSS_SELECTOR, ".info .title").text
    assert title.startswith("nbo") and "None" not in title
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(served) for name in loaded), loaded
