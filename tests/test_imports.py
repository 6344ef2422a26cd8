"""The serving engine loads without the training stack: scikit-learn (segments), implicit,
LightFM and MLflow stay out of its import, so a worker starts and reloads fast."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sklearn", "implicit", "lightfm", "mlflow", "optuna", "bentoml")


def test_the_engine_imports_nothing_of_the_training_stack() -> None:
    code = ("import json, sys; import serving.engine; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert json.loads(found) == []
