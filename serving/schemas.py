"""Request and response bodies of the HTTP API (flat JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Channel = Literal["web", "app", "email", "sms", "push", "post"]
Block = Literal["profile", "lifecycle", "last_visit", "regional"]
Purpose = Literal["personalization", "email", "sms", "push", "post", "sensitive"]
Action = Literal["impression", "click", "conversion", "dismiss"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankContext(Body):
    product_id: str | None = Field(None, description="Product on screen (product page).")
    cart: list[str] = Field(default_factory=list, max_length=200,
                            description="Products in the cart: never offered.")
    session: list[str] = Field(default_factory=list, max_length=200,
                               description="Products seen in this session.")
    region: str | None = Field(None, description="Region, where the profile has none.")
    now: datetime | None = Field(None, description="Moment of the request; default: now.")


class OfferOut(BaseModel):
    product_id: str
    title: str
    rank: int
    score: float
    reason: str


class RankResponse(BaseModel):
    request_id: str
    model_version: str
    customer_id: str
    lifecycle_stage: str
    fallback: str | None = Field(None, description="Which fallback ranked, if any.")
    withheld: str | None = Field(None, description="Why no offers may be sent, if so.")
    offers: list[OfferOut]


class SimilarResponse(BaseModel):
    request_id: str
    model_version: str
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
    letters: list[Letter]


class FeedbackEvent(Body):
    customer_id: str = Field(min_length=1, max_length=128)
    product_id: str = Field(min_length=1, max_length=128)
    action: Action
    channel: Channel | None = None
    request_id: str | None = Field(None, max_length=64)
    position: int | None = Field(None, ge=1)
    model_version: str | None = Field(None, max_length=32)
    timestamp: datetime | None = Field(None, description="When it happened; default: now.")


class FeedbackResponse(BaseModel):
    request_id: str
    model_version: str
    stored: int = Field(description="Events new to the store.")
    duplicates: int = Field(0, description="Events the store held already (a retry).")
    erased: int = Field(0, description="Events of erased customers, not stored.")


class EventIn(Body):
    """One event in the data contract's columns, checked by the contract's own rules."""

    event_id: str = Field(min_length=1, max_length=128,
                          description="The client's id of the event: a retry is stored once.")
    customer_id: str = Field(min_length=1, max_length=128)
    product_id: str = Field(min_length=1, max_length=128)
    event_type: str = Field(description="purchase, return, wishlist, rating, cart or view.")
    timestamp: str | float | None = Field(
        None, description="When it happened, ISO 8601 (UTC where no offset is given) or epoch "
        "seconds; default: when it is received.")
    quantity: float | None = Field(None, description="Units of a purchase or return; "
                                   "default 1.")
    rating: float | None = Field(None, description="1 to 5, for a rating.")
    order_id: str | None = Field(None, max_length=128)
    channel: Channel | None = None


class EventsResponse(FeedbackResponse):
    pass


class ConsentChange(Body):
    purpose: Purpose
    granted: bool
    double_opt_in: bool = False


class ConsentUpdate(Body):
    consents: list[ConsentChange] = Field(min_length=1, max_length=len(get_args(Purpose)))
    source: str = Field("api", min_length=1, max_length=64)
