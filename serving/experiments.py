"""Experiments: arms served side by side, each to the customers a hash assigns to it.

An experiment has a name, two or more arms and a status. An arm is a name, a share of the
experiment's customers (percent), the registered model version it serves and, for a policy
variant, an offer policy of its own (else the one in use serves it). Assignment is
sticky and deterministic: a hash of the experiment's salt and the customer's id, so a customer
gets the same arm in every worker, replica and restart. The universal control group stays out
of every experiment, and consent and every rule apply in every arm.

An experiment is created as a draft, runs from ``start`` to ``stop`` and is then kept for its
report; at most one runs at a time (every served list belongs to one arm), and a stopped
experiment is not started again (its customers were measured): create a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

Status = Literal["draft", "running", "stopped"]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_CUSTOMERS = 1000  # per arm: under it the report warns that its intervals are wide
ARM_MODEL_NAME = "nbo-arm"  # the BentoML store's name for arms' models, apart from the champion


class ExperimentError(ValueError):
    """An experiment that cannot be made or moved as asked; the message says why."""


@dataclass(frozen=True)
class Arm:
    name: str
    share: float  # percent of the experiment's customers
    model: str  # the BentoML store's tag of the model the arm serves
    model_version: str  # its version in the MLflow registry
    policy: str = ""  # an offer policy variant (its YAML text); empty: the one in use


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    salt: str = ""  # the experiment's name unless given
    min_customers: int = MIN_CUSTOMERS
    status: Status = "draft"
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    _bounds: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name, "experiment")
        if len(self.arms) < 2:
            raise ExperimentError(f"experiment {self.name!r} needs at least two arms")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ExperimentError(f"experiment {self.name!r} names an arm twice: {names}")
        for arm in self.arms:
            check_name(arm.name, "arm")
            if not 0 < arm.share <= 100:
                raise ExperimentError(f"arm {arm.name!r} has a share of {arm.share}; "
                                      "give each arm more than 0 and at most 100 percent")
        total = sum(arm.share for arm in self.arms)
        if abs(total - 100) > 1e-9:
            raise ExperimentError(f"the arms' shares add up to {total:g}, not 100")
        if self.min_customers < 1:
            raise ExperimentError("the minimum sample is at least one customer per arm")
        if not self.salt:
            object.__setattr__(self, "salt", self.name)
        running, bounds = 0.0, []
        for arm in self.arms:
            running += arm.share / 100
            bounds.append(running)
        object.__setattr__(self, "_bounds", tuple(bounds))

    def arm_of(self, customer_id: str) -> Arm:
        """The customer's arm: the same for every call, worker and restart."""
        key = f"{self.salt}|{customer_id}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        for arm, bound in zip(self.arms, self._bounds, strict=True):
            if draw < bound:
                return arm
        return self.arms[-1]  # a draw at the last bound's rounding

    def shares(self) -> dict[str, float]:
        return {arm.name: arm.share / 100 for arm in self.arms}

    def moved(self, status: Status, at: datetime) -> Experiment:
        if status == "running":
            if self.status != "draft":
                raise ExperimentError(
                    f"experiment {self.name!r} is {self.status}; only a draft starts (its "
                    "customers were measured already: create a new experiment)")
            return replace(self, status=status, started_at=at)
        if self.status != "running":
            raise ExperimentError(f"experiment {self.name!r} is {self.status}, not running")
        return replace(self, status=status, stopped_at=at)

    def spec(self) -> str:
        """What the store keeps besides the name, status and moments: JSON."""
        return json.dumps({"arms": [asdict(arm) for arm in self.arms], "salt": self.salt,
                           "min_customers": self.min_customers})

    @classmethod
    def from_row(cls, row: Any) -> Experiment:
        spec = json.loads(row.spec)
        return cls(row.name, tuple(Arm(**arm) for arm in spec["arms"]), spec["salt"],
                   spec["min_customers"], row.status, row.created_at, row.started_at,
                   row.stopped_at)

    def summary(self) -> dict[str, Any]:
        moments = {key: (value.isoformat() if value else None) for key, value in (
            ("created_at", self.created_at), ("started_at", self.started_at),
            ("stopped_at", self.stopped_at))}
        return {"name": self.name, "status": self.status, "salt": self.salt,
                "min_customers": self.min_customers,
                "arms": [asdict(arm) for arm in self.arms], **moments}


def check_name(name: str, what: str) -> None:
    if not NAME.match(name):
        raise ExperimentError(f"{what} name {name!r}: 1 to 64 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit")


def parse_arms(text: str) -> list[tuple[str, str, float]]:
    """``champion:50,challenger:50`` (or ``base=champion:50,new=champion:50``, naming each
    arm apart from the model version it serves) as (arm, model, share); a clear error for
    bad text."""
    arms = []
    for part in (p.strip() for p in text.split(",")):
        named, colon, share = part.rpartition(":")
        name, equals, model = named.partition("=")
        if not equals:
            model = name
        if not colon or not name.strip() or not model.strip():
            raise ExperimentError(f"arm {part!r}: write MODEL:SHARE or NAME=MODEL:SHARE, e.g. "
                                  "champion:50")
        try:
            arms.append((name.strip(), model.strip(), float(share)))
        except ValueError:
            raise ExperimentError(f"arm {part!r}: the share {share!r} is not a number"
                                  ) from None
    return arms
