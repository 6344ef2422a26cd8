"""The service in-process (``to_asgi()``) with a model of the generated shop, for the tests
that talk to it over HTTP: ``client`` and the customers they need (``people``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from features.snapshot import load_snapshot

KEY, ADMIN = "rank-key-1", "admin-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"X-API-Key": ADMIN}


@pytest.fixture
def service_env(model_dir: Path, snapshot_dir: Path, tmp_path: Path, consent_url: str,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    from serving.models import import_model

    import_model(model_dir, "1")
    monkeypatch.setenv("NBO_API_KEYS", f"{KEY},another-key")
    monkeypatch.setenv("NBO_ADMIN_API_KEYS", ADMIN)
    monkeypatch.setenv("NBO_CONSENT_DB_URL", consent_url)
    monkeypatch.setenv("NBO_NOW", load_snapshot(snapshot_dir).now.isoformat())
    monkeypatch.setenv("NBO_RELOAD_SECONDS", "0")
    monkeypatch.setenv("NBO_TRIGGER_SECONDS", "0")  # passes run when a test asks
    return tmp_path


@pytest.fixture
def client(service_env: Path) -> Iterator[TestClient]:
    from serving.service import NboService

    with TestClient(NboService.to_asgi()) as http:
        yield http
    forget_bentoml_collectors()


def forget_bentoml_collectors() -> None:
    """Each in-process app registers BentoML's request metrics in the process-wide registry;
    a server process builds one app, a test session many."""
    import prometheus_client

    registry = prometheus_client.REGISTRY
    for collector, names in list(registry._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            registry.unregister(collector)


@pytest.fixture(scope="module")
def people(snapshot_dir: Path) -> dict[str, str]:
    """Customers of the shop by what the tests need of them."""
    snapshot = load_snapshot(snapshot_dir)
    consents = snapshot.consents.pivot_table(index="customer_id", columns="purpose",
                                             values="granted", aggfunc="last")
    doi = snapshot.consents[snapshot.consents["purpose"] == "email"].set_index(
        "customer_id")["double_opt_in"]
    state = snapshot.features.customer_state.set_index("customer_id")
    buyers = state.index[state["purchases"] > 3]
    mailable = consents.index[(consents.get("email") == True) & doi.reindex(  # noqa: E712
        consents.index).fillna(False).astype(bool)]
    no_email = consents.index[consents.get("email") != True]  # noqa: E712
    return {
        "buyer": next(c for c in buyers if c in mailable
                      and consents.loc[c].get("personalization") == True),  # noqa: E712
        "no_email": next(c for c in buyers if c in no_email),
    }
