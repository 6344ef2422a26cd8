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

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from features.settings import Settings
from serving import models
from serving.openapi import amend

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/", "/docs.json",
                        "/schema.json", "/admin/openapi.json"})
OPEN_PREFIXES = ("/static_content/", "/assets/")
CONSOLE = "/console"  # the console checks its own session cookie (serving.console)
API_PAGES = frozenset({"/", "/docs"})
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


class ClientErrorsPlain(logging.Filter):
    """BentoML logs a request its validation refuses (a 400) as an error with the
    traceback, which also carries the values sent: logged as a warning, one line, no
    traceback, no values. Server errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError) or (
                isinstance(error, BentoMLException) and error.error_code < 500):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused %s [%s]: " + (
                f"{error.error_count()} validation error(s)"
                if isinstance(error, ValidationError) else f"{error.error_code.value}")
        return True


def quiet_logs() -> None:
    """The worker's logging: no ids of admin paths in the access log, client errors
    without tracebacks."""
    for name, kind in (("bentoml.access", PathIdsOut),
                       ("bentoml._internal.server.http_app", ClientErrorsPlain)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


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


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"})


def is_json(scope: Scope) -> bool:
    """Whether the request declares a JSON body (``application/json``, ``…+json``)."""
    declared = dict(scope.get("headers") or []).get(b"content-type", b"")
    kind = declared.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/")
                                            and kind.endswith(b"+json"))


class ApiKeys:
    """Every request's gate: /readyz; methods (TRACE and the like refused); API keys;
    request bodies only as JSON (415) and at most ``NBO_MAX_BODY_BYTES`` (413), read whole
    before the route sees them. Keys are given by the service from its settings."""

    def __init__(self, app: ASGIApp, keys: str | None = None, admin_keys: str | None = None,
                 max_body_bytes: int | None = None) -> None:
        settings = Settings()
        self.app = app
        self.keys = parse_keys(settings.api_keys if keys is None else keys)
        self.admin_keys = parse_keys(settings.admin_api_keys if admin_keys is None else admin_keys)
        self.max_body = settings.max_body_bytes if max_body_bytes is None else max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] not in METHODS:
            await send_json(send, 405, {"error": f"method {scope['method']} is not allowed"},
                            ((b"allow", ", ".join(sorted(METHODS)).encode()),))
            return
        if path == "/readyz":
            await readiness(send)
            return
        if path in API_PAGES and scope["method"] in ("GET", "HEAD"):
            await api_page(send)
            return
        if path == CONSOLE or path.startswith(CONSOLE + "/"):
            await self.app(scope, receive, send)
            return
        if path in DOCUMENTS and scope["method"] == "GET":
            await amended_document(self.app, scope, receive, send, DOCUMENTS[path])
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        keys = self.admin_keys if path.startswith(ADMIN_PREFIXES) else self.keys
        if not matches(presented_key(scope), keys):
            await send_json(send, 401, {"error": "missing or invalid API key"},
                            ((b"www-authenticate", b"Bearer"),))
            return
        if scope["method"] in ("POST", "PUT"):
            await self.with_body(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a body that is too large or not JSON (an empty one, as /admin/reload
        takes, may come without a type); else hand it on, read whole."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = {"error": f"the body is larger than {self.max_body:,} bytes "
                              "(NBO_MAX_BODY_BYTES)"}
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await send_json(send, 413, too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # a chunked body without a length, or one that lied
                await send_json(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not is_json(scope):
            await send_json(send, 415, {"error": "send the body as JSON, with Content-Type: "
                                                 "application/json"})
            return
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)


DOCUMENTS = {"/docs.json": False, "/schema.json": False, "/admin/openapi.json": True}


async def amended_document(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                           admin: bool) -> None:
    """The generator's OpenAPI document, as :func:`serving.openapi.amend` completes it."""
    started: Message = {}
    chunks: list[bytes] = []

    async def keep(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    if started.get("status") != 200:
        await send_json(send, int(started.get("status", 500)),
                        {"error": "the API document could not be made"})
        return
    await send_json(send, 200, amend(json.loads(b"".join(chunks)), admin))


async def api_page(send: Send) -> None:
    """The API's page (:func:`serving.console.api_page`), allowing scripts of its own origin
    only."""
    from serving.console import HEADERS
    from serving.console import api_page as page

    body = page()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in HEADERS.items())]})
    await send({"type": "http.response.body", "body": body})


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
