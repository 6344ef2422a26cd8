"""The notebooks are stored clean: no outputs, no execution counts (they are run by
``pytest --nbmake notebooks``, which ``make test`` does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_are_there() -> None:
    assert [n.name for n in NOTEBOOKS] == ["01_explore.ipynb", "02_compare_models.ipynb",
                                           "03_segments.ipynb", "04_customer.ipynb",
                                           "05_experiments.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.name)
def test_notebooks_are_stored_without_outputs(notebook: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    dirty = [i for i, cell in enumerate(cells) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert dirty == [], f"clear the outputs of cells {dirty}: make clean-notebooks"
