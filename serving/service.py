"""The BentoML service: wires HTTP to the ranking engine, the store and the model holder.

Start with ``nbo serve`` (or ``bentoml serve serving.service:NboService``). Keys come from
``NBO_API_KEYS`` and ``NBO_ADMIN_API_KEYS``; without them the service refuses to start.
"""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, get_args

import anyio.to_thread
import bentoml
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from features.settings import Settings, quiet_third_parties
from serving import actions, console, models
from serving.access import DAYS, MAX_DAYS, CustomerExport, Erased, customer_export
from serving.attribution import WINDOW_DAYS
from serving.decision_log import Assigned, DecisionLog, letter_rows, ranking_row
from serving.engine import Engine, PolicySettings, Ranking, RequestError
from serving.engine import Request as RankRequest
from serving.experiments import NAME, ExperimentError
from serving.http import ApiKeys, quiet_logs
from serving.ingest import BadEvents, Checker
from serving.metrics import METRICS
from serving.models import ModelHolder
from serving.offer_policy import PolicyError, from_json
from serving.report import served_report
from serving.schemas import (
    Block,
    Channel,
    ConsentUpdate,
    EventIn,
    EventsResponse,
    FeedbackEvent,
    FeedbackResponse,
    Id,
    Letter,
    Moment,
    NewsletterResponse,
    OfferOut,
    RankContext,
    RankResponse,
    SimilarResponse,
)
from serving.store import Store, open_store
from serving.triggers import MIN_SECRET_LENGTH, Triggers, Webhook, feed_page

quiet_third_parties()
T = TypeVar("T")
# a customer id in an admin path: as the stores keep ids (1 to 128, no control characters)
PathId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
admin = FastAPI(title="nbo admin", openapi_url="/admin/openapi.json", docs_url=None,
                redoc_url=None)
admin.mount(console.PREFIX, console.app)


@admin.exception_handler(RequestValidationError)
async def invalid_admin_body(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "detail": error.errors()}, status_code=400)


@admin.exception_handler(HTTPException)
async def admin_refusal(_: Request, refusal: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body it cannot parse, say) in the service's error shape."""
    return JSONResponse({"error": str(refusal.detail)}, status_code=refusal.status_code,
                        headers=refusal.headers)


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def moment(settings: Settings, given: datetime | None) -> datetime:
    """The request's ``now``, else the pinned setting, else the wall clock (naive UTC)."""
    if given is None:
        return settings.current_time()
    return given.astimezone(UTC).replace(tzinfo=None) if given.tzinfo else given


def ranking_body(ranking: Ranking) -> RankResponse:
    return RankResponse(
        request_id=ranking.request_id, model_version=ranking.model_version,
        policy_version=ranking.policy_version, customer_id=ranking.customer_id,
        lifecycle_stage=ranking.lifecycle_stage,
        fallback=ranking.fallback, withheld=ranking.withheld,
        offers=[OfferOut(**vars(offer)) for offer in ranking.offers])


def rank_response(engine: Engine, store: Store, request: RankRequest, now: datetime,
                  log: DecisionLog | None = None, assigned: Assigned | None = None
                  ) -> RankResponse:
    """One /rank answered: the customer's consent from the store, the policed ranking, its
    counters and decision log row (under the customer's experiment arm where ``assigned``),
    the response body."""
    with store.reading():
        consent = store.consent(request.customer_id, engine.settings.personalization_default)
        ranking = engine.rank(request, now, consent)
    count(ranking, "rank")
    if log is not None and ranking.offers:
        log.record([ranking_row(ranking, request.channel, "rank", now, assigned)])
    return ranking_body(ranking)


def count(ranking: Ranking, endpoint: str) -> None:
    METRICS.served.labels(endpoint=endpoint).inc(len(ranking.offers))
    if ranking.fallback:
        METRICS.fallbacks.labels(fallback=ranking.fallback).inc()
    if ranking.withheld:
        METRICS.withheld.labels(reason=ranking.withheld).inc()
    for rule, removed in ranking.removed.items():
        if removed:
            METRICS.filtered.labels(rule=rule).inc(removed)


def webhook(settings: Settings) -> Webhook | None:
    """The trigger webhook of the settings; a URL without a long enough secret refuses the
    start."""
    if not settings.trigger_webhook_url:
        return None
    if len(settings.trigger_webhook_secret) < MIN_SECRET_LENGTH:
        raise RuntimeError(f"NBO_TRIGGER_WEBHOOK_URL is set: NBO_TRIGGER_WEBHOOK_SECRET needs "
                           f"at least {MIN_SECRET_LENGTH} characters to sign its posts")
    return Webhook(settings.trigger_webhook_url, settings.trigger_webhook_secret)


STARTUP = Settings()  # what must be known when the class is declared


@bentoml.asgi_app(admin, path="/")
@bentoml.service(name="nbo", workers=STARTUP.workers,
                 # BentoML divides the service's limit among its workers
                 traffic={"timeout": STARTUP.request_timeout_seconds,
                          "max_concurrency": STARTUP.max_in_flight * STARTUP.workers or None},
                 # every path excluded: the tracing middleware passes requests straight through
                 tracing={} if STARTUP.tracing else {"excluded_urls": "."})
class NboService:
    """Rankings, newsletter blocks, similar offers and feedback, with the request-time policy
    of DESIGN.md applied per request."""

    # declared so that 'bentoml build' packs the model store's entry into the Bento; the
    # holder below finds it there (or a newer one) and loads it
    ranker = bentoml.models.BentoModel(STARTUP.model_tag)

    def __init__(self) -> None:
        self.settings = Settings()
        if not self.settings.api_keys.strip() or not self.settings.admin_api_keys.strip():
            raise RuntimeError("no API keys configured: set NBO_API_KEYS and NBO_ADMIN_API_KEYS "
                               "(comma-separated); 'nbo demo' generates a pair")
        quiet_logs()
        self.store = open_store(self.settings)  # refuses to start without NBO_ERASURE_KEY
        self.holder = ModelHolder(self.settings.model_tag, self.store,
                                  PolicySettings.from_settings(self.settings),
                                  self.settings.allow_other_dataset)
        models.CURRENT = self.holder
        if self.settings.policy_file is not None:  # a bad file refuses the start, saying why
            self.holder.offer_policy_file(self.settings.policy_file)
        else:
            self.holder.sync_policy()
        self.holder.refresh()
        self.holder.sync_experiment()
        self.holder.watch(self.settings.reload_seconds)
        self.decisions = DecisionLog(self.store, self.settings.decision_log_days,
                                     self.settings.current_time)
        console.CURRENT = console.Console(self.holder, self.store, self.settings,
                                          self.decisions)
        self.triggers = Triggers(self.store, webhook(self.settings), self.decisions)
        self._stop = threading.Event()
        self.checker = Checker()  # /events' data contract, out of the worker's interpreter
        self.checker.start()
        self.triggers.every(self.settings.trigger_seconds, lambda: self.holder.engine,
                            self.settings.current_time, self._stop)
        if self.settings.gc_freeze:  # the model and libraries are long-lived: out of GC scans
            gc.collect()
            gc.freeze()
        METRICS.collections.start()

    @bentoml.on_shutdown
    def close(self) -> None:
        self._stop.set()
        self.holder.stop()
        self.decisions.close()
        self.checker.close()
        self.store.close()

    def __is_ready__(self) -> bool:
        return self.holder.engine is not None and self.checker.ready

    def __metrics__(self, content: str) -> str:
        return content + METRICS.text()

    def _engine(self) -> Engine:
        return self.holder.serving()

    async def _answer(self, work: Callable[[], T], in_thread: bool = False) -> T | JSONResponse:
        try:
            return await anyio.to_thread.run_sync(work) if in_thread else work()
        except BadEvents as caller:
            return JSONResponse({"error": str(caller), "invalid": caller.bad}, status_code=400)
        except RequestError as caller:
            return error(str(caller), caller.status)

    @bentoml.api(route="/rank")
    async def rank(
        self,
        customer_id: Id,
        channel: Channel = "web",
        k: Annotated[int, Field(ge=1, le=100)] = 10,
        context: RankContext | None = None,
        explain: bool = False,
    ) -> RankResponse:
        """Ranked offers for one customer on one channel, with reasons; with ``explain``
        each offer's priority and its components."""
        given = context or RankContext()

        def work() -> RankResponse:
            now = moment(self.settings, given.now)
            request = RankRequest(customer_id, channel, k, now, given.product_id, given.cart,
                                  given.session, given.region, explain)
            engine, assigned = self.holder.route(customer_id, now)
            return rank_response(engine, self.store, request, now, self.decisions, assigned)

        return await self._answer(work)  # type: ignore[return-value]

    @bentoml.api(route="/similar")
    async def similar(
        self,
        product_id: Id,
        k: Annotated[int, Field(ge=1, le=100)] = 10,
        channel: Channel = "web",
        customer_id: Id | None = None,
        now: Moment | None = None,
    ) -> SimilarResponse:
        """Offers similar to a product, for a product page or a cart."""

        def work() -> SimilarResponse:
            at = moment(self.settings, now)
            engine, assigned = (self.holder.route(customer_id, at) if customer_id
                                else (self._engine(), None))
            with self.store.reading():
                consent = (self.store.consent(customer_id,
                                              engine.settings.personalization_default)
                           if customer_id else None)
                ranking = engine.similar(product_id, k, channel, at, consent, customer_id)
            count(ranking, "similar")
            if ranking.offers:
                self.decisions.record([ranking_row(ranking, channel, "similar", at, assigned)])
            return SimilarResponse(request_id=ranking.request_id,
                                   model_version=ranking.model_version,
                                   policy_version=ranking.policy_version, product_id=product_id,
                                   offers=[OfferOut(**vars(o)) for o in ranking.offers])

        return await self._answer(work)  # type: ignore[return-value]

    @bentoml.api(route="/newsletter")
    async def newsletter(
        self,
        customers: Annotated[list[Id], Field(min_length=1, max_length=1000)],
        blocks: list[Block] = list(get_args(Block)),  # noqa: B006  (pydantic copies defaults)
        now: Moment | None = None,
    ) -> NewsletterResponse:
        """Distinct offers per customer for the newsletter blocks, or why there is no mail."""

        def work() -> NewsletterResponse:
            engine, at = self._engine(), moment(self.settings, now)
            version, request_id = engine.arbiter.version, uuid.uuid4().hex
            written, assigned, versions = self.holder.letters(customers, tuple(blocks), at)
            self.decisions.record(letter_rows(written, request_id, engine.version, version,
                                              "newsletter", at, assigned, versions))
            letters = [Letter.model_validate(asdict(x)) for x in written]
            for letter in letters:
                METRICS.served.labels(endpoint="newsletter").inc(len(letter.blocks))
            return NewsletterResponse(request_id=request_id, model_version=engine.version,
                                      policy_version=version, letters=letters)

        return await self._answer(work, in_thread=True)  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    async def feedback(
        self, events: Annotated[list[FeedbackEvent], Field(min_length=1, max_length=10_000)]
    ) -> FeedbackResponse:
        """Impressions, clicks, conversions and dismissals, stored before the answer; a
        retried (request_id, customer_id, product_id, action) is stored once. A conversion
        counts as a purchase and a dismissal rests the offer, from the next request on."""

        def work() -> FeedbackResponse:
            received = datetime.now(UTC).replace(tzinfo=None)
            rows = [{**event.model_dump(), "timestamp": moment(self.settings, event.timestamp)}
                    for event in events]
            engine = self.holder.engine
            budgets = engine.arbiter.conversions if engine is not None else None
            appended = self.store.append_feedback(rows, received, budgets)
            if engine is not None and any(row["action"] == "conversion" for row in rows):
                engine.budgets_changed()
            for event in events:
                METRICS.feedback.labels(action=event.action).inc()
            return FeedbackResponse(request_id=uuid.uuid4().hex,
                                    model_version=engine.version if engine else "",
                                    **asdict(appended))

        return await self._answer(work, in_thread=True)  # type: ignore[return-value]

    @bentoml.api(route="/events")
    async def events(
        self, events: Annotated[list[EventIn], Field(min_length=1, max_length=10_000)]
    ) -> EventsResponse:
        """What customers did in the shop (purchases, returns, wish lists, ratings, carts,
        views), checked by the data contract and stored before the answer; effective on the
        next request in every worker. A call with a bad event stores nothing and lists each
        bad one; a retried event_id is stored once."""

        def work() -> EventsResponse:
            engine = self._engine()
            received = datetime.now(UTC).replace(tzinfo=None)
            rows = self.checker.rows(events, engine.product_ids, moment(self.settings, None))
            appended = self.store.append_events(rows, received)
            METRICS.events.inc(appended.stored)
            return EventsResponse(request_id=uuid.uuid4().hex, model_version=engine.version,
                                  **asdict(appended))

        return await self._answer(work, in_thread=True)  # type: ignore[return-value]

    # --- admin (FastAPI class views: path parameters, PUT and DELETE) -----------------

    @admin.put("/consents/{customer_id}")
    async def set_consents(self, customer_id: PathId, update: ConsentUpdate) -> dict[str, Any]:
        """Change a customer's consents; effective on the next request; kept in the trail."""
        changes: dict[str, tuple[bool, bool]] = {
            c.purpose: (c.granted, c.double_opt_in) for c in update.consents}
        trail = await anyio.to_thread.run_sync(
            lambda: actions.change_consents(self.store, customer_id, changes, update.source))
        return {"request_id": uuid.uuid4().hex, "customer_id": customer_id, "changes": trail}

    @admin.delete("/customers/{customer_id}")
    async def erase(self, customer_id: PathId, source: Annotated[str, Query(
            min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")] = "api"
                    ) -> dict[str, Any]:
        """Erase a customer from consents, feedback, state and the model."""

        def work() -> dict[str, Any]:
            erasure_id, removed = actions.erase(self.holder, self.store, customer_id, source)
            return {"request_id": uuid.uuid4().hex, "erasure_id": erasure_id,
                    "removed": removed}

        return await anyio.to_thread.run_sync(work)

    @admin.get("/customers/{customer_id}/export", response_model=CustomerExport,
               responses={410: {"model": Erased, "description": "The customer is erased."}})
    async def export(self, customer_id: PathId, days: Annotated[float, Query(
            gt=0, le=MAX_DAYS, description="Decisions of the last days.")] = DAYS) -> Any:
        """Everything held for the customer (GDPR Art. 15) and, for each offer shown to
        them in the last ``days``, the decision, its reason and the rules it passed; an
        erased customer answers 410 with only that they are erased."""

        def work() -> CustomerExport | Erased:
            self.decisions.flush()  # this worker's last lists are in the log
            return customer_export(self._engine(), self.store, customer_id,
                                   moment(self.settings, None), days)

        made = await self._answer(work, in_thread=True)
        if isinstance(made, Erased):
            return JSONResponse(made.model_dump(), status_code=410)
        return made

    @admin.post("/admin/reload")
    async def reload(self) -> Any:
        """Look for a newer model now instead of waiting for the next poll, and read the
        policy file (NBO_POLICY_FILE) again."""

        def work() -> dict[str, Any]:
            if self.settings.policy_file is not None:
                self.holder.offer_policy_file(self.settings.policy_file)
            else:
                self.holder.sync_policy()
            said = self.holder.refresh()
            self.holder.sync_experiment()
            return {"message": said}

        try:
            said = await anyio.to_thread.run_sync(work)
        except PolicyError as bad:
            return error(str(bad), 400)
        status = self.holder.status
        return {**said, "model": status.serving, "model_version": status.version,
                "experiment": status.experiment,
                "refused": status.refused, "policy_version": self.holder.policy.version}

    @admin.get("/triggers")
    async def trigger_feed(
        self, since: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, dropped: bool = False,
    ) -> dict[str, Any]:
        """The triggers' decisions after cursor ``since``, in order, for the e-mail or push
        tool: ask again from the answer's ``cursor`` once they are handed over (at least
        once: a repeated cursor gives the same decisions). Sent decisions only; with
        ``dropped`` also those dropped, with their reason."""
        decisions, cursor = await anyio.to_thread.run_sync(
            lambda: feed_page(self.store, since, limit, dropped))
        return {"decisions": decisions, "cursor": cursor}

    @admin.post("/admin/triggers/run")
    async def run_triggers(self) -> Any:
        """Run a pass of the triggers now (at NBO_NOW where pinned), instead of waiting for
        the next one of NBO_TRIGGER_SECONDS; another process's pass running answers 409."""

        def work() -> Any:
            done = self.triggers.run(self._engine(), self.settings.current_time())
            if not done.ran:
                raise RequestError("another process is running a pass of the triggers", 409)
            return asdict(done)

        return await self._answer(work, in_thread=True)

    @admin.get("/admin/experiments")
    async def experiments(self) -> Any:
        """Every experiment, newest first, and the one served here."""
        held = await anyio.to_thread.run_sync(self.store.experiments)
        status = self.holder.status
        return {"serving": status.experiment, "refused": status.experiment_refused,
                "experiments": [e.summary() for e in held]}

    @admin.get("/admin/experiments/{name}")
    async def experiment(
        self, name: Annotated[str, Path(pattern=NAME.pattern)],
        control: Annotated[str | None, Query(max_length=64)] = None,
        window_days: Annotated[float, Query(gt=0, le=90)] = WINDOW_DAYS,
    ) -> Any:
        """An experiment and its report (as 'nbo report experiment NAME --json' gives it);
        ``universal-control`` reports the universal control group. It counts every list
        this process served; other processes' last half second may still be on its way."""

        def work() -> dict[str, Any]:
            self.decisions.flush()
            return {**served_report(self._engine(), self.store, name, control,
                                    self.settings.control_share, window_days),
                    "served_here": self.holder.status.experiment == name}

        try:
            return await self._answer(work, in_thread=True)
        except ExperimentError as unknown:
            return error(str(unknown), 404)
        except ValueError as bad:
            return error(str(bad), 400)

    @admin.get("/admin/policy")
    async def policy(self) -> dict[str, Any]:
        """The offer policy in use: its version and settings."""
        held = self.holder.policy
        return {"policy_version": held.version,
                "policy": held.policy.model_dump(mode="json", exclude_defaults=True)}

    @admin.get("/admin/budgets")
    async def budgets(self) -> Any:
        """Each budget of the offer policy in use: what it counts, its period, limit, what
        was used in the current period and what is left."""

        def work() -> dict[str, Any]:
            engine = self._engine()
            arbiter, now = engine.arbiter, moment(self.settings, None)
            keys = arbiter.budget_keys(now)
            used = self.store.budget_used(keys)
            return {"policy_version": arbiter.version, "budgets": [
                {"name": budget.name, "counts": budget.counts, "period": budget.period,
                 "current_period": key[1], "limit": budget.limit, "used": used[key],
                 "left": left, "offers": int(members.sum())}
                for (budget, members), key, left in zip(arbiter.budgets, keys,
                                                        arbiter.left(used, now), strict=True)]}

        return await self._answer(work, in_thread=True)

    @admin.put("/admin/policy")
    async def put_policy(self, body: dict[str, Any]) -> Any:
        """Replace the offer policy (its settings as JSON, as in policy.yaml): checked
        against the served catalogue, then in use here at once and in every other worker
        and replica within NBO_RELOAD_SECONDS."""
        try:
            versioned = from_json(body)
            await anyio.to_thread.run_sync(lambda: self.holder.put_policy(versioned, "api"))
        except PolicyError as bad:
            return error(str(bad), 400)
        return {"request_id": uuid.uuid4().hex, "policy_version": versioned.version}


# bentoml.service returns a Service, which the type checker still sees as the class
NboService.add_asgi_middleware(ApiKeys)  # type: ignore[attr-defined]
