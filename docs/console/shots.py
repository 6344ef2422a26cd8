"""Screenshots of each console page on the demo shop (``make console-shots``), into this
folder: the demo's workspace is made if it is missing, an A/A experiment is started and the
response simulator drives the service for a few days so that the offers and experiment pages
have responses to show. Needs Debian's chromium and chromium-driver."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).parent
CUSTOMERS, DAYS = 400, 3  # simulated, for the responses the pages show
PAGES = ("customer", "offers", "experiments", "experiment", "models", "api")


def nbo(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nbo", *args], check=True)


def full_page(driver: Any, path: Path) -> None:
    """The whole page, not only the window: the window is made as tall as the page."""
    driver.set_window_size(1400, 700)  # the page's own height, not the last window's
    time.sleep(0.2)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(height, 700), 6000))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    print(f"wrote {path.relative_to(HERE.parents[1])}")


def main() -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    from features.generate import hidden_tastes
    from features.snapshot import load_snapshot
    from nbo.jobs.browser import chromium
    from nbo.jobs.demo import (
        demo_customer,
        start_demo_service,
        stop_demo_service,
        use_demo_workspace,
    )
    from nbo.jobs.simulate import Simulator
    from serving.store import open_store

    home = use_demo_workspace()
    if not (home / "snapshot").exists() or not (home / "bentoml").exists():
        nbo("demo")  # generate, train, register, promote, serve: the demo's workspace
    snapshot = home / "snapshot"
    now = load_snapshot(snapshot).now
    from features.settings import Settings

    os.environ["NBO_NOW"] = now.isoformat()  # the experiment's moments on the shop's clock
    os.environ.setdefault("NBO_ERASURE_KEY", Settings(home=home).local_erasure_key())
    store = open_store(Settings())
    try:
        running = store.running_experiment()
        if running is not None:
            nbo("experiment", "stop", running.name)
        name = f"tour-{len(store.experiments()) + 1}"
    finally:
        store.close()
    nbo("experiment", "create", name, "--arms", "base=champion:50,same=champion:50",
        "--min-customers", "100")
    nbo("experiment", "start", name)
    service = start_demo_service(home.resolve(), snapshot, 3000)
    try:
        with httpx.Client(base_url=service.url, timeout=60, headers={
                "Authorization": f"Bearer {service.api_key}"}) as http:
            Simulator(http, hidden_tastes(home / "shop"), seed=1).run(CUSTOMERS, DAYS, now)
        with tempfile.TemporaryDirectory() as profile:
            driver = chromium(Path(profile))
            try:
                wait = WebDriverWait(driver, 30)
                driver.get(f"{service.url}/console/login")
                driver.find_element(By.ID, "key").send_keys(service.admin_key)
                driver.find_element(By.ID, "login").click()
                wait.until(shown.presence_of_element_located((By.ID, "customer-id")))
                customer = demo_customer(snapshot)
                driver.get(f"{service.url}/console/customer?id={customer}")
                full_page(driver, HERE / "customer.png")
                for page in ("offers", "experiments", "models"):
                    driver.get(f"{service.url}/console/{page}")
                    full_page(driver, HERE / f"{page}.png")
                driver.get(f"{service.url}/console/experiments/{name}")
                full_page(driver, HERE / "experiment.png")
                driver.set_window_size(1400, 1000)
                driver.get(f"{service.url}/docs")
                wait.until(shown.presence_of_element_located(
                    (By.CSS_SELECTOR, ".btn.authorize")))
                full_page(driver, HERE / "api.png")
            finally:
                driver.quit()
    finally:
        stop_demo_service(home.resolve())


if __name__ == "__main__":
    main()
