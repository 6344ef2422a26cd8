"""Request and response bodies of the HTTP API (flat JSON)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from features.columns import EARLIEST, LATEST

Channel = Literal["web", "app", "email", "sms", "push", "post"]
Block = Literal["profile", "lifecycle", "last_visit", "regional"]
Purpose = Literal["personalization", "email", "sms", "push", "post", "sensitive"]
Action = Literal["impression", "click", "conversion", "dismiss"]


def in_range(moment: datetime) -> datetime:
    outside = ValueError(f"must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)")
    try:  # 0001-01-01 with a positive offset is before year 1 in UTC: no datetime holds it
        naive = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    except OverflowError:
        raise outside from None
    if not EARLIEST <= naive < LATEST:
        raise outside
    return moment


# a moment the service computes with (nanoseconds since 1970 hold until 2262)
Moment = Annotated[datetime, AfterValidator(in_range)]
# ids as every store keeps them: 1 to 128 characters, no control characters (NUL included)
Id = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                      pattern=r"^[^\x00-\x1f\x7f]+$")]
Text64 = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                          pattern=r"^[^\x00-\x1f\x7f]+$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankContext(Body):
    product_id: Id | None = Field(None, description="Product on screen (product page).")
    cart: list[Id] = Field(default_factory=list, max_length=200,
                           description="Products in the cart: never offered.")
    session: list[Id] = Field(default_factory=list, max_length=200,
                              description="Products seen in this session.")
    region: Text64 | None = Field(None, description="Region, where the profile has none.")
    now: Moment | None = Field(None, description="Moment of the request, from 1970 to before "
                               "2200; default: now.")


class OfferOut(BaseModel):
    product_id: str
    title: str
    rank: int
    score: float
    reason: str
    priority: float | None = Field(None, description="With explain: the arbitration's "
                                   "priority, propensity^a * value^b * weight * context "
                                   "weight.")
    components: dict[str, float] | None = Field(None, description="With explain: "
                                                "propensity, value, weight, context_weight.")


class RankResponse(BaseModel):
    request_id: str
    model_version: str
    policy_version: str = Field(description="The offer policy the answer was ranked with.")
    customer_id: str
    lifecycle_stage: str
    fallback: str | None = Field(None, description="Which fallback ranked, if any.")
    withheld: str | None = Field(None, description="Why no offers may be sent, if so.")
    offers: list[OfferOut]


class SimilarResponse(BaseModel):
    request_id: str
    model_version: str
    policy_version: str
    product_id: str
    offers: list[OfferOut]


class BlockOut(BaseModel):
    block: Block
    product_id: str
    title: str
    score: float
    reason: str


class Letter(BaseModel):
    customer_id: str
    lifecycle_stage: str | None = None
    fallback: str | None = None
    no_mail: str | None = Field(None, description="Why the customer gets no personalised mail.")
    blocks: list[BlockOut]


class NewsletterResponse(BaseModel):
    request_id: str
    model_version: str
    policy_version: str
    letters: list[Letter]


class FeedbackEvent(Body):
    customer_id: Id
    product_id: Id
    action: Action
    channel: Channel | None = None
    request_id: Text64 | None = None
    position: int | None = Field(None, ge=1, le=10_000, description="Rank the offer was shown at.")
    model_version: Annotated[str, StringConstraints(max_length=32,
                                                    pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    timestamp: Moment | None = Field(None, description="When it happened, from 1970 to before "
                                     "2200; default: now.")


class FeedbackResponse(BaseModel):
    request_id: str
    model_version: str
    stored: int = Field(description="Events new to the store.")
    duplicates: int = Field(0, description="Events the store held already (a retry).")
    erased: int = Field(0, description="Events of erased customers, not stored.")


class EventIn(Body):
    """One event in the data contract's columns, checked by the contract's own rules."""

    event_id: Id = Field(description="The client's id of the event: a retry is stored once.")
    customer_id: Id
    product_id: Id
    event_type: str = Field(description="purchase, return, wishlist, rating, cart or view.")
    timestamp: str | float | None = Field(
        None, description="When it happened, ISO 8601 (UTC where no offset is given) or epoch "
        "seconds; default: when it is received.")
    quantity: float | None = Field(None, description="Units of a purchase or return; "
                                   "default 1.")
    rating: float | None = Field(None, description="1 to 5, for a rating.")
    order_id: Id | None = None
    channel: Channel | None = None


class EventsResponse(FeedbackResponse):
    pass


class ConsentChange(Body):
    purpose: Purpose
    granted: bool
    double_opt_in: bool = False


class ConsentUpdate(Body):
    consents: list[ConsentChange] = Field(min_length=1, max_length=len(get_args(Purpose)))
    source: Text64 = "api"
