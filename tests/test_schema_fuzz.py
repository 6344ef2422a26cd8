"""schemathesis against a real ``bentoml serve``, both OpenAPI documents (the API and the
admin API), on the SQLite and the PostgreSQL store: no server error, and every answer as
its document declares it. Bounded: a fixed number of examples per operation and a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from store_backends import BOTH_DATABASES
from test_serve_process import service_env, serving

pytestmark = pytest.mark.slow
EXAMPLES = 50
# each with its key; BentoML's document lists the admin routes too: they are fuzzed with
# the admin key from the admin document
DOCUMENTS = {"/docs.json": ("k", ["--exclude-path-regex", "^/(consents|customers|admin)/"]),
             "/admin/openapi.json": ("a", [])}


@BOTH_DATABASES
@pytest.mark.parametrize("document", list(DOCUMENTS))
def test_fuzzing_finds_no_server_error_and_no_answer_off_its_schema(
        model_dir: Path, snapshot_dir: Path, tmp_path: Path, consent_url: str,
        document: str) -> None:
    from serving.models import import_model

    import_model(model_dir, "7")
    env = service_env(snapshot_dir, tmp_path, NBO_CONSENT_DB_URL=consent_url)
    report = tmp_path / "report.json"
    with serving(env, tmp_path / "serve.log") as url:
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}{document}",
             "--url", url, "-H", f"Authorization: Bearer {DOCUMENTS[document][0]}",
             *DOCUMENTS[document][1],
             "--max-examples", str(EXAMPLES), "--seed", "7", "--generation-deterministic",
             "--checks", "not_a_server_error,response_schema_conformance,"
             "status_code_conformance,content_type_conformance",
             "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color"],
            capture_output=True, text=True, timeout=900, env=env)
    (tmp_path / "schemathesis.txt").write_text(run.stdout)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert report.exists() and json.loads(report.read_text().splitlines()[0])
