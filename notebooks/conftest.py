"""Running the notebooks as tests (``pytest --nbmake notebooks``): each kernel gets a
throw-away NBO_HOME with a small generated shop, made by the first notebook that opens it."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ["NBO_HOME"] = tempfile.mkdtemp(prefix="nbo-notebooks-")
os.environ.setdefault("NBO_NOTEBOOK_CUSTOMERS", "400")
os.environ["MPLBACKEND"] = "Agg"
for name in ("NBO_MLFLOW_TRACKING_URI", "NBO_OPTUNA_STORAGE", "NBO_CONSENT_DB_URL", "NBO_NOW"):
    os.environ.pop(name, None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
