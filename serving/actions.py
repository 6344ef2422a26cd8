"""The admin's writes, one code path for the API and the console: a consent change and an
erasure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from serving.models import ModelHolder
from serving.store import Store


def now_utc() -> datetime:
    """The wall clock as the store keeps it (naive UTC): when a change was made."""
    return datetime.now(UTC).replace(tzinfo=None)


def change_consents(store: Store, customer_id: str, changes: dict[str, tuple[bool, bool]],
                    source: str) -> list[dict[str, Any]]:
    """Apply ``{purpose: (granted, double_opt_in)}``; effective on the next request in every
    worker; each change in the trail, as JSON-ready rows."""
    trail = store.set_consents(customer_id, changes, source, now_utc())
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in change.items()}
            for change in trail]


def erase(holder: ModelHolder, store: Store, customer_id: str, source: str
          ) -> tuple[int, dict[str, int]]:
    """Erase a customer from every engine serving here and from the store (which every other
    worker and replica reads before serving them); the erasure's id and what was removed."""
    held: dict[str, int] = {}
    for engine in holder.engines():
        for kind, removed in engine.forget(customer_id).items():
            held[kind] = held.get(kind, 0) + removed
    erasure = store.erase(customer_id, source, now_utc(), held)
    return erasure.erasure_id, erasure.removed
