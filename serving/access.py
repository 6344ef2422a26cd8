"""A customer's access report (GDPR Art. 15): everything nbo holds of them, and each offer
shown to them in the last days with the decision, its reason and the rules it passed.
Served as JSON by ``GET /customers/{customer_id}/export`` (admin) and the console's export
button; the schema is :class:`CustomerExport` (documented in ``docs/customer-export.md``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from features.columns import PURPOSES
from serving.engine import Engine, Request
from serving.policy import RULES, Consent
from serving.state import moment_ns
from serving.store import NO_EXPOSURE, Store

SCHEMA = "nbo.customer-export/1"


def as_utc(moment: datetime) -> datetime:
    """The store's naive moments are UTC: said so, as RFC 3339 wants."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


Utc = Annotated[datetime, AfterValidator(as_utc)]
DAYS = 90  # the decisions shown by default: the decision log's longest usual retention
MAX_DAYS = 3650  # the longest period of decisions asked for


class Erased(BaseModel):
    """The answer for an erased customer: that they are erased, and nothing else."""

    customer_id: str
    erased: Literal[True] = True


class ConsentHeld(BaseModel):
    purpose: str
    granted: bool
    double_opt_in: bool
    effective: bool = Field(description="Whether nbo acts on it now (e-mail needs double "
                                        "opt-in; personalisation may come from the default).")


class ConsentChangeHeld(BaseModel):
    purpose: str
    granted: bool
    double_opt_in: bool
    previous: str = Field(description="granted, denied or none")
    changed_at: Utc
    source: str


class ShownOffer(BaseModel):
    product_id: str
    title: str | None
    position: int
    block: str | None = Field(None, description="The newsletter block, for a letter.")
    reason: str | None = Field(description="The reason given with it (none for decisions "
                                           "logged before reasons were kept).")
    score: float | None
    priority: float | None
    explored: bool = False


class Decision(BaseModel):
    request_id: str
    decided_at: Utc
    channel: str
    endpoint: str = Field(description="rank, similar, newsletter or a trigger")
    lifecycle_stage: str | None
    experiment: str | None
    arm: str | None
    model_version: str
    policy_version: str
    rules: list[str] = Field(description="The request-time rules every offer shown passed.")
    offers: list[ShownOffer]


class CustomerExport(BaseModel):
    """Everything held for one customer; lists oldest first."""

    schema_: str = Field(SCHEMA, alias="schema")
    customer_id: str
    generated_at: Utc
    decisions_since: Utc
    lifecycle_stage: str
    consents: list[ConsentHeld]
    consent_trail: list[ConsentChangeHeld]
    events: list[dict[str, Any]] = Field(description="Events the shop posted to /events.")
    feedback: list[dict[str, Any]] = Field(description="Impressions, clicks, conversions and "
                                                       "dismissals posted to /feedback.")
    trigger_decisions: list[dict[str, Any]]
    state: dict[str, Any] = Field(description="The profile and history serving holds: "
                                              "region, segment, purchases, returns, last visit.")
    model: dict[str, Any] = Field(description="What the model holds: whether it knows the "
                                              "customer, the history it scores from and its "
                                              "own parameters of them.")
    decisions: list[Decision]

    model_config = {"populate_by_name": True}


def customer_export(engine: Engine, store: Store, customer_id: str, now: datetime,
                    days: float = DAYS) -> CustomerExport | Erased:
    """The access report of one customer at ``now``, decisions of the last ``days``."""
    if store.erased_among([customer_id], returned_too=False):
        engine.row_of(customer_id)  # forgets them here too, where this worker had not yet
        return Erased(customer_id=customer_id)
    row = engine.row_of(customer_id)
    now_ns = moment_ns(now)
    _, _, stage = engine.staged(Request(customer_id), now, NO_EXPOSURE)
    held = store.held_of(customer_id)
    since = now - timedelta(days=days)
    return CustomerExport(
        customer_id=customer_id, generated_at=now, decisions_since=since,
        lifecycle_stage=stage,
        consents=consents_held(store, customer_id, store.consent(
            customer_id, engine.settings.personalization_default)),
        consent_trail=[ConsentChangeHeld(**{k: v for k, v in change.items()
                                            if k in ConsentChangeHeld.model_fields})
                       for change in store.consent_trail(customer_id).to_dict("records")],
        events=[_without(e, "seq", "customer_id") for e in held["events"]],
        feedback=[_without(f, "id", "customer_id") for f in held["feedback"]],
        trigger_decisions=[_without(d, "id", "customer_id", "cursor")
                           for d in held["trigger_decisions"]],
        state={"known": row >= 0, **engine.state.described(row, now_ns)},
        model={"version": engine.version, **engine.model.held(customer_id)},
        decisions=decisions_of(engine, store, customer_id, since))


def consents_held(store: Store, customer_id: str, effective: Consent) -> list[ConsentHeld]:
    """Each purpose's record where the store has one, with whether nbo acts on it now
    (``effective``: the store's consent of the customer, as requests read it)."""
    records = {row["purpose"]: row for row in store.consent_records(customer_id)}
    acting = {"personalization": effective.personalization, "sensitive": effective.sensitive,
              **{channel: channel in effective.channels for channel in PURPOSES
                 if channel not in ("personalization", "sensitive")}}
    return [ConsentHeld(purpose=purpose, granted=bool(records[purpose]["granted"]),
                        double_opt_in=bool(records[purpose]["double_opt_in"]),
                        effective=acting[purpose])
            if purpose in records else
            ConsentHeld(purpose=purpose, granted=False, double_opt_in=False,
                        effective=acting[purpose])
            for purpose in PURPOSES]


def decisions_of(engine: Engine, store: Store, customer_id: str, since: datetime
                 ) -> list[Decision]:
    titles = dict(zip(engine.offers.ids.tolist(), engine.offers.titles.tolist(), strict=True))
    decided = []
    for row in store.decisions_of(customer_id):
        if row["decided_at"] < since:
            continue
        decided.append(Decision(
            request_id=row["request_id"], decided_at=row["decided_at"], channel=row["channel"],
            endpoint=row["endpoint"], lifecycle_stage=row["stage"],
            experiment=row["experiment"], arm=row["arm"], model_version=row["model_version"],
            policy_version=row["policy_version"], rules=list(RULES),
            offers=[ShownOffer(product_id=o["product_id"], title=titles.get(o["product_id"]),
                               position=o["position"], block=o.get("block"),
                               reason=o.get("reason"), score=o.get("score"),
                               priority=o.get("priority"), explored=bool(o.get("explored")))
                    for o in row["offers"]]))
    return decided


def _without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}
