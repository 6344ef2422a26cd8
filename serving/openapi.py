"""The OpenAPI documents as the service answers: BentoML's (``/docs.json``) and the admin
API's (``/admin/openapi.json``), amended where their generators say less than the service
does. Every refusal the gate or a route gives is declared with its error body; a 400's
``detail`` is the list of validation errors it is; fields that may be null say so (BentoML
writes OpenAPI 3.0, where ``nullable`` must be explicit); the title and version are nbo's."""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, for a person."},
        "detail": {"type": "array", "description": "The validation errors, field by field.",
                   "items": {"type": "object"}},
        "invalid": {"type": "array", "description": "/events: each bad event and why.",
                    "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "event_id": {"type": "string"},
                        "reason": {"type": "string"}}}},
    },
}
REFUSALS = {
    "400": "The request breaks its schema or names what the service does not know.",
    "401": "Missing or invalid API key (an admin key for admin routes).",
    "413": "The body is larger than NBO_MAX_BODY_BYTES.",
    "415": "The body is not JSON.",
}
SCHEMES = {  # either one carries the key (admin routes need an admin key)
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
OPEN = {"/healthz", "/livez", "/readyz", "/metrics"}
BODILESS = {"/admin/reload", "/admin/triggers/run"}  # POST routes that take no body


def amend(document: dict[str, Any], admin: bool) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    doc["info"] = {"title": "nbo admin" if admin else "nbo",
                   "version": metadata.version("nbo"),
                   "description": "Next-best offers with consent, lifecycle and contact rules."
                   if not admin else "Consents, erasure and model reloads (admin keys)."}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    doc["components"]["securitySchemes"] = SCHEMES
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            if path == "/readyz":
                responses["503"] = {"description": "No model serves yet."}
            if path in OPEN:
                continue
            operation["security"] = [{name: []} for name in SCHEMES]
            responses.pop("422", None)  # validation answers 400
            for code, why in REFUSALS.items():
                responses[code] = {"description": why, "content": error}
            if not path.startswith(("/consents/", "/customers/", "/admin/")):
                responses["429"] = {"description": "More requests in flight than the "
                                    "worker takes (NBO_MAX_IN_FLIGHT)."}
                responses["503"] = {"description": "No model is loaded yet.",
                                    "content": error}
            if path == "/admin/triggers/run":
                responses["409"] = {"description": "Another process is running a pass of "
                                    "the triggers.", "content": error}
                responses["503"] = {"description": "No model is loaded yet.",
                                    "content": error}
            if path == "/admin/experiments/{name}":
                responses["404"] = {"description": "No experiment of this name.",
                                    "content": error}
                responses["503"] = {"description": "No model is loaded yet.",
                                    "content": error}
            if method == "delete" or (method == "post" and path in BODILESS):
                for code in ("413", "415"):  # no body to refuse
                    del responses[code]
    if doc.get("openapi", "").startswith("3.0"):
        _nullable(doc)
    return doc


def _nullable(node: Any) -> None:
    """A field whose default is null may be null: say so."""
    if isinstance(node, dict):
        if "default" in node and node["default"] is None and ("type" in node or "$ref" in node
                                                              or "allOf" in node):
            node["nullable"] = True
        for value in node.values():
            _nullable(value)
    elif isinstance(node, list):
        for value in node:
            _nullable(value)
