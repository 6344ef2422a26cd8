"""HTTP concerns around the service: API keys and the readiness answer.

One ASGI middleware in front of every route: health and metrics are open; admin routes need
an admin key; everything else a ranking key (``Authorization: Bearer`` or ``X-API-Key``).
Keys are compared in constant time, and a refusal never says which part was wrong.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from features.settings import Settings
from serving import models

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/", "/docs.json",
                        "/schema.json", "/admin/openapi.json"})
OPEN_PREFIXES = ("/static_content/", "/assets/")
ADMIN_PREFIXES = ("/consents/", "/customers/", "/admin/")


class PathIdsOut(logging.Filter):
    """Customer ids out of BentoML's access log: ``/customers/ID`` and ``/consents/ID``
    are logged as ``/customers/{id}``, so an erased customer's id is not kept there."""

    PATTERN = re.compile(r"(path=/(?:customers|consents)/)[^,)\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1{id}", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def keep_ids_out_of_access_log() -> None:
    access = logging.getLogger("bentoml.access")
    if not any(isinstance(f, PathIdsOut) for f in access.filters):
        access.addFilter(PathIdsOut())


def parse_keys(value: str) -> tuple[bytes, ...]:
    return tuple(key.strip().encode() for key in value.split(",") if key.strip())


def matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant time in the given key: every configured key is compared."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


def presented_key(scope: Scope) -> bytes:
    headers = dict(scope.get("headers") or [])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"").strip()


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class ApiKeys:
    """API-key check and /readyz; keys are given by the service from its settings."""

    def __init__(self, app: ASGIApp, keys: str | None = None, admin_keys: str | None = None
                 ) -> None:
        settings = Settings()
        self.app = app
        self.keys = parse_keys(settings.api_keys if keys is None else keys)
        self.admin_keys = parse_keys(settings.admin_api_keys if admin_keys is None else admin_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/readyz":
            await readiness(send)
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        keys = self.admin_keys if path.startswith(ADMIN_PREFIXES) else self.keys
        if not matches(presented_key(scope), keys):
            await send_json(send, 401, {"error": "missing or invalid API key"},
                            ((b"www-authenticate", b"Bearer"),))
            return
        await self.app(scope, receive, send)


async def readiness(send: Send) -> None:
    """200 while a model serves (naming it, the newer entries it serves instead of because
    they were refused, and every refused entry with why), else 503."""
    holder = models.CURRENT
    status = holder.status if holder is not None else models.Status()
    body = {"ready": status.serving is not None, "model": status.serving,
            "model_version": status.version, "serving_since": status.since,
            "newer_refused": status.passed_over, "checked_seconds": status.checked_seconds,
            "refused": status.refused, "worker": os.getpid()}
    await send_json(send, 200 if status.serving else 503, body)
