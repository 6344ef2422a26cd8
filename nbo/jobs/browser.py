"""A headless Chromium of the system's (Debian's ``chromium`` and ``chromium-driver``) under
Selenium: what the console's browser tests and ``make console-shots`` drive. Nothing is
downloaded: a machine without Chromium gets :class:`NoBrowser` saying what to install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# no calls home: this machine's network is closed, and a console test must not depend on one
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


class NoBrowser(RuntimeError):
    pass


def chromium(profile: Path, downloads: Path | None = None, width: int = 1400,
             height: int = 1000) -> Any:
    """A new headless Chromium with its own profile folder; files it downloads go to
    ``downloads``. The caller quits it."""
    if not (CHROMIUM.exists() and DRIVER.exists()):
        raise NoBrowser("Chromium and its driver are not installed: apt install chromium "
                        "chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option("prefs", {
            "download.default_directory": str(downloads), "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(DRIVER)), options=options)
