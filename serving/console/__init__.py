"""The marketer console at ``/console``: look a customer up and see what they would get on
each channel and in the newsletter and why, the offers, the experiments and the models; change
a consent, erase a customer, export what is held of them.

For admin keys only. A login with an admin key opens a session kept in the store (so every
worker and replica knows it; logout ends it everywhere); the browser holds a random cookie
(HttpOnly, SameSite=Strict, Secure unless ``NBO_CONSOLE_SECURE_COOKIE`` is off) and the
store only its hash. Every form that changes something carries the session's CSRF token.
Pages are rendered on the server with Jinja2; the few assets come from this package, and
the pages allow no other origin (Content-Security-Policy). No personal data goes into a URL
beyond the customer id the marketer typed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import anyio.to_thread
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Row
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from features.columns import PURPOSES
from features.settings import Settings
from serving import actions
from serving.access import DAYS, MAX_DAYS, CustomerExport, Erased, customer_export
from serving.assignment import CONTROL_GROUP
from serving.attribution import WINDOW_DAYS
from serving.console import views
from serving.decision_log import DecisionLog
from serving.experiments import NAME, ExperimentError
from serving.http import parse_keys
from serving.models import ModelHolder
from serving.report import served_report
from serving.requests import RequestError
from serving.schemas import Id
from serving.store import Store

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PREFIX = "/console"
COOKIE, LOGIN_COOKIE = "nbo_console", "nbo_console_login"
MAX_FORM_BYTES = 16_384
HEADERS = {  # every page: nothing from another origin, not framed, not cached, no referrer
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
    "x-frame-options": "DENY", "cache-control": "no-store",
}
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(prefix=PREFIX, version=metadata.version("nbo"))
templates.env.filters["fixed"] = lambda value, digits=3: (
    "n/a" if value is None or value != value else f"{value:,.{digits}f}")
templates.env.filters["percent"] = lambda value, digits=1: (
    "n/a" if value is None or value != value else f"{100 * value:.{digits}f}%")
templates.env.filters["quoted"] = lambda value: quote(str(value), safe="")


@dataclass
class Console:
    """What one worker's console reads and changes: the service's holder, store and
    decision log."""

    holder: ModelHolder
    store: Store
    settings: Settings
    decisions: DecisionLog

    def now(self) -> datetime:
        return self.settings.current_time()


CURRENT: Console | None = None  # the service of this worker sets it


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def admin_key_digest(given: str, settings: Settings) -> str | None:
    """The digest of ``given`` where it is an admin key (compared in constant time with
    every one), else None."""
    found = False
    for key in parse_keys(settings.admin_api_keys):
        found |= hmac.compare_digest(given.encode(), key)
    return digest(given) if found else None


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    return templates.TemplateResponse(request, template, context, status_code=status,
                                      headers=HEADERS)


def redirect(to: str) -> Response:
    return RedirectResponse(PREFIX + to, status_code=303, headers=HEADERS)


def console() -> Console:
    if CURRENT is None:
        raise RequestError("the console is not running in this process", 503)
    return CURRENT


async def form(request: Request) -> dict[str, str]:
    """A URL-encoded form's fields (the first value of each); a larger or other body is
    refused."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise RequestError("send the form as application/x-www-form-urlencoded", 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise RequestError(f"the form is larger than {MAX_FORM_BYTES:,} bytes", 413)
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def session_of(request: Request, held: Console) -> Row[Any] | None:
    """The request's unexpired session, made with an admin key that is still one."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    found = held.store.console_session(digest(cookie), datetime.now(UTC).replace(tzinfo=None))
    if found is None:
        return None
    current = {digest(key.decode()) for key in parse_keys(held.settings.admin_api_keys)}
    return found if found.key_digest in current else None


Handler = Callable[[Request, Console, Row[Any]], Awaitable[Response]]


def signed_in(handler: Handler, writes: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in admin (others go to the login page); ``writes``: a form post,
    which must carry the session's CSRF token."""

    async def endpoint(request: Request) -> Response:
        try:
            held = console()
            session = await anyio.to_thread.run_sync(session_of, request, held)
            if session is None:
                if request.method == "GET":
                    return redirect("/login")
                return page(request, "error.html", 401, message="Your session has ended: "
                            "log in again.")
            if writes:
                fields = await form(request)
                if not hmac.compare_digest(fields.get("csrf", "").encode(),
                                           session.csrf.encode()):
                    return page(request, "error.html", 403,
                                message="This form is out of date or came from elsewhere: "
                                        "reload the page and try again.")
                request.state.form = fields
            request.state.csrf = session.csrf
            return await handler(request, held, session)
        except RequestError as refused:
            return page(request, "error.html", refused.status, message=str(refused))

    return endpoint


# --- login ----------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", csrf=token, refused=None)
    cookie(response, LOGIN_COOKIE, token, 600)
    return response


async def login(request: Request) -> Response:
    """An admin key opens a session; a wrong or non-admin key is refused (logged without
    the key)."""
    try:
        held, fields = console(), await form(request)
    except RequestError as refused:
        return page(request, "error.html", refused.status, message=str(refused))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(fields.get("csrf", "").encode(),
                                               expected.encode()):
        return page(request, "error.html", 403, message="The login form is out of date: "
                    "open it again.")
    key_digest = admin_key_digest(fields.get("key", "").strip(), held.settings)
    if key_digest is None:
        log.warning("console login refused (client %s)",
                    request.client.host if request.client else "?")
        token = secrets.token_urlsafe(24)
        response = page(request, "login.html", 401, csrf=token,
                        refused="That is not an admin key.")
        cookie(response, LOGIN_COOKIE, token, 600)
        return response
    value, at = secrets.token_urlsafe(32), datetime.now(UTC).replace(tzinfo=None)
    hours = held.settings.console_session_hours
    await anyio.to_thread.run_sync(lambda: held.store.open_session(
        digest(value), secrets.token_urlsafe(32), key_digest, at, at + timedelta(hours=hours)))
    response = redirect("/customer")
    cookie(response, COOKIE, value, int(hours * 3600))
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


def cookie(response: Response, name: str, value: str, seconds: int) -> None:
    held = CURRENT
    secure = held.settings.console_secure_cookie if held is not None else True
    response.set_cookie(name, value, max_age=seconds, path=PREFIX, secure=secure,
                        httponly=True, samesite="strict")


async def logout(request: Request, held: Console, session: Row[Any]) -> Response:
    await anyio.to_thread.run_sync(held.store.close_session, session.digest)
    response = redirect("/login")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


async def home(request: Request) -> Response:
    return redirect("/customer")


# --- pages ----------------------------------------------------------------------------------


AN_ID = TypeAdapter(Id)


def typed_id(value: str | None) -> str:
    """A customer id as typed, trimmed, under the API's rule for ids."""
    try:
        return AN_ID.validate_python((value or "").strip())
    except ValidationError:
        raise RequestError("a customer id has 1 to 128 characters and no control characters"
                           ) from None


async def customer(request: Request, held: Console, _: Row[Any]) -> Response:
    asked = request.query_params.get("id")
    if asked is None or not asked.strip():
        return page(request, "customer.html", view=None, purposes=PURPOSES)
    customer_id = typed_id(asked)
    view = await anyio.to_thread.run_sync(
        views.customer, held.holder, held.store, customer_id, held.now())
    return page(request, "customer.html", view=view, purposes=PURPOSES, k=views.K,
                block_title=views.block_title, changed=request.query_params.get("changed"))


async def consent(request: Request, held: Console, _: Row[Any]) -> Response:
    """One purpose granted or withdrawn, through the same code as the admin API."""
    fields = request.state.form
    customer_id = typed_id(fields.get("id"))
    purpose = fields.get("purpose", "")
    if purpose not in PURPOSES or fields.get("granted") not in ("yes", "no"):
        raise RequestError(f"choose a purpose of {list(PURPOSES)} and yes or no")
    granted = fields["granted"] == "yes"
    # e-mail consent is granted here with double opt-in confirmed only where the form says so
    change = {purpose: (granted, granted and fields.get("double_opt_in") == "yes")}
    await anyio.to_thread.run_sync(lambda: actions.change_consents(
        held.store, customer_id, change, "console"))
    return redirect(f"/customer?id={quote(customer_id, safe='')}&changed={purpose}")


async def erase_form(request: Request, held: Console, _: Row[Any]) -> Response:
    customer_id = typed_id(request.query_params.get("id"))
    return page(request, "erase.html", customer_id=customer_id, mismatch=False)


async def erase(request: Request, held: Console, _: Row[Any]) -> Response:
    """Erase after the id was typed again, through the same code as the admin API."""
    fields = request.state.form
    customer_id = typed_id(fields.get("id"))
    if fields.get("confirm", "").strip() != customer_id:
        return page(request, "erase.html", 400, customer_id=customer_id, mismatch=True)
    erasure_id, removed = await anyio.to_thread.run_sync(
        actions.erase, held.holder, held.store, customer_id, "console")
    log.info("console erasure %s", erasure_id)
    return page(request, "erased.html", erasure_id=erasure_id, removed=removed)


async def export(request: Request, held: Console, _: Row[Any]) -> Response:
    """The customer's access report as a JSON download (the API's export)."""
    customer_id = typed_id(request.query_params.get("id"))
    days = export_days(request.query_params.get("days"))
    def work() -> CustomerExport | Erased:
        held.decisions.flush()  # this worker's last lists are in the log
        return customer_export(held.holder.serving(), held.store, customer_id, held.now(), days)

    made = await anyio.to_thread.run_sync(work)
    body = json.dumps(made.model_dump(mode="json", by_alias=True), indent=2)
    return Response(body, media_type="application/json", headers={
        **HEADERS, "content-disposition": 'attachment; filename="customer-export.json"'})


def export_days(given: str | None) -> float:
    try:
        days = float(given) if given else DAYS
    except ValueError:
        raise RequestError("days is a number of days") from None
    if not 0 < days <= MAX_DAYS:
        raise RequestError(f"days is between 0 and {MAX_DAYS}")
    return days


async def offers(request: Request, held: Console, _: Row[Any]) -> Response:
    try:
        number = int(request.query_params.get("page", "1"))
    except ValueError:
        raise RequestError("page is a number") from None
    query = request.query_params.get("q", "").strip()[:128]
    view = await anyio.to_thread.run_sync(lambda: views.offers_page(
        held.holder.serving(), held.store, held.now(), number, query))
    return page(request, "offers.html", view=view)


async def experiments(request: Request, held: Console, _: Row[Any]) -> Response:
    listed = await anyio.to_thread.run_sync(held.store.experiments)
    return page(request, "experiments.html", experiments=listed,
                serving=held.holder.status.experiment,
                control_group=held.settings.control_share > 0, control_name=CONTROL_GROUP)


async def experiment(request: Request, held: Console, _: Row[Any]) -> Response:
    name = request.path_params["name"]
    if name != CONTROL_GROUP and not NAME.match(name):
        raise RequestError(f"no experiment named {name!r}", 404)
    try:
        made = await anyio.to_thread.run_sync(lambda: served_report(
            held.holder.serving(), held.store, name, None, held.settings.control_share,
            WINDOW_DAYS))
    except ExperimentError as unknown:
        raise RequestError(str(unknown), 404) from None
    except ValueError as bad:
        raise RequestError(str(bad)) from None
    bars, zero, height = views.lift_chart(made["report"]["lift"])
    return page(request, "experiment.html", experiment=made, report=made["report"],
                bars=bars, zero=zero, height=height, width=views.CHART_WIDTH,
                left=views.CHART_LEFT)


async def models(request: Request, held: Console, _: Row[Any]) -> Response:
    view = await anyio.to_thread.run_sync(views.models_page, held.holder)
    return page(request, "models.html", view=view)


app = Starlette(routes=[
    Route("/", home),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", signed_in(logout, writes=True), methods=["POST"]),
    Route("/customer", signed_in(customer)),
    Route("/customer/consent", signed_in(consent, writes=True), methods=["POST"]),
    Route("/customer/erase", signed_in(erase_form), methods=["GET"]),
    Route("/customer/erase", signed_in(erase, writes=True), methods=["POST"]),
    Route("/customer/export", signed_in(export)),
    Route("/offers", signed_in(offers)),
    Route("/experiments", signed_in(experiments)),
    Route("/experiments/{name}", signed_in(experiment)),
    Route("/models", signed_in(models)),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
])


def api_page() -> bytes:
    """The API's page: Swagger UI from BentoML's own copy, nbo's two documents, the key
    scheme that its Authorize button sends."""
    return templates.get_template("api.html").render().encode()
