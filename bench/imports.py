"""How long a fresh process takes to import the serving engine, against the libraries it
cannot do without (numpy, pandas, scipy.sparse, SQLAlchemy, pydantic) measured in the same run,
and which heavy packages the import pulls in.

    uv run python bench/imports.py [--runs 7]

Each figure is the median wall time of ``--runs`` fresh interpreters (after one warm-up run,
so that compiled bytecode is on disk). Results go to bench/results/imports.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CASES = {
    "python alone": "pass",
    "reference: numpy, pandas, scipy.sparse, sqlalchemy, pydantic":
        "import numpy, pandas, scipy.sparse, sqlalchemy, pydantic",
    "serving.engine": "import serving.engine",
}
HEAVY = ("sklearn", "implicit", "lightfm", "mlflow", "optuna", "bentoml")
TARGET_SECONDS = 2.0


def seconds(code: str, runs: int) -> float:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    figures = {name: seconds(code, args.runs) for name, code in CASES.items()}
    probe = (f"import json, sys; import serving.engine; "
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    pulled = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT,
                                       capture_output=True, text=True).stdout)
    own = figures["serving.engine"] - figures["reference: numpy, pandas, scipy.sparse, "
                                              "sqlalchemy, pydantic"]
    lines = [
        "# Import time of the serving engine",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; median of {args.runs} fresh interpreters each.",
        "Produced by `uv run python bench/imports.py`.",
        "",
        "| import | seconds |",
        "| --- | ---: |",
        *[f"| {name} | {value:.2f} |" for name, value in figures.items()],
        "",
        f"- the engine's own cost over the reference: {own:.2f} s",
        f"- heavy packages pulled in: {', '.join(pulled) if pulled else 'none'} "
        f"(checked: {', '.join(HEAVY)})",
        f"- target: under {TARGET_SECONDS:.0f} s for the engine; "
        f"{'met' if figures['serving.engine'] < TARGET_SECONDS else 'not met'} on this machine",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "imports.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
