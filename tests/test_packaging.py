"""The Bento's pinned packages follow uv.lock (``make requirements`` after ``uv lock``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    found = {}
    for line in (PROJECT / "serving" / "requirements.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            found[normalised(match[1])] = match[2]
    return found


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_bento_requirements_pin_what_uv_lock_pins() -> None:
    lock = tomllib.loads((PROJECT / "uv.lock").read_text())
    locked = {normalised(p["name"]): p["version"] for p in lock["package"] if "version" in p}
    pinned = pins()
    assert {name: version for name, version in pinned.items()
            if locked.get(name) != version} == {}, "run 'make requirements'"
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    direct = {normalised(re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0])
              for d in project["dependencies"]}
    assert direct - set(pinned) == set(), "run 'make requirements'"
