"""What a newsletter letter is: per customer, an offer for each block asked for, or why
there is no mail."""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCKS = ("profile", "lifecycle", "last_visit", "regional")
BLOCK_REASONS = {"regional": "popular in your region", "last_visit": "from your last visit"}


@dataclass(frozen=True)
class LetterBlock:
    block: str
    product_id: str
    title: str
    score: float
    reason: str


@dataclass(frozen=True)
class Letter:
    customer_id: str
    blocks: list[LetterBlock] = field(default_factory=list)
    lifecycle_stage: str | None = None
    fallback: str | None = None
    no_mail: str | None = None  # why the customer gets no personalised mail
    arm: str | None = None  # of the universal control group, where there is one
