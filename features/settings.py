"""Process settings, read from the environment (prefix ``NBO_``) by entry points only."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def redacted(url: str) -> str:
    """A database URL fit to print or log: its password (in the authority or as a
    ``password`` query parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, colon, _ = credentials.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{host}"
    query = "&".join(f"{key}=***" if key.lower() == "password" else f"{key}{sep}{value}"
                     for key, sep, value in (pair.partition("=")
                                             for pair in parts.query.split("&") if pair))
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide (and sqlite:////path keeps its slashes)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class Settings(BaseSettings):
    """Every path and URL nbo uses; defaults run on a laptop with embedded SQLite files."""

    model_config = SettingsConfigDict(env_prefix="NBO_", extra="ignore")

    home: Path = Field(Path(".nbo"), description="Folder for the embedded stores and demo data.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<home>/mlflow.db."
    )
    optuna_storage: str | None = Field(
        None, description="Optuna storage URL; default sqlite:///<home>/optuna.db."
    )
    consent_db_url: str | None = Field(
        None, description="SQLAlchemy URL of the consent store; default sqlite:///<home>/consent.db."
    )
    now: datetime | None = Field(
        None, description="Pins 'now' for replays and historical data sets; default wall clock."
    )
    personalization_default: str = Field(
        "granted", pattern="^(granted|denied)$",
        description="Personalisation consent assumed for customers without any consent record.",
    )
    api_keys: str = Field("", description="Comma-separated API keys for the ranking endpoints.")
    admin_api_keys: str = Field("", description="Comma-separated API keys for admin endpoints.")
    erasure_key: str = Field(
        "", description="Key of the hashes that keep erased customers erased; never stored in "
                        "the database. Required by the service and the store's jobs; the demo "
                        "and the notebooks keep one in NBO_HOME/erasure.key.")
    contact_max_impressions: int = Field(
        3, ge=1, description="Impressions without a click after which an offer rests."
    )
    contact_window_days: float = Field(
        14.0, gt=0, description="Window in days of the contact policy's impression count."
    )
    max_per_category: int = Field(3, ge=1, description="Offers per category in one list.")
    dismiss_rest_days: float = Field(
        30.0, ge=0, description="Days an offer rests for a customer after they dismissed it."
    )
    live_events_per_customer: int = Field(
        200, ge=1, le=10_000, description="Events posted since the model's snapshot that "
        "count per customer (their latest); the rest wait for the next training."
    )
    allow_other_dataset: bool = Field(
        False, description="Serve a model trained on another dataset than the one the "
                           "store serves (the first model it served was trained on).")
    max_body_bytes: int = Field(
        10_000_000, ge=1_000,
        description="Largest request body the service reads (413 above it); 10,000 events "
                    "of /events take about 3 MB.")
    max_in_flight: int = Field(
        16, ge=0, description="Requests one worker takes at a time; more are answered 429 at "
        "once (a client retries elsewhere or later) instead of queueing until every answer is "
        "late. 0: no limit."
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=64,
        description="Worker processes of the service; default: the number of cores."
    )
    model_tag: str = Field(
        "nbo-ranker:latest", description="BentoML model the service serves (imported on promote)."
    )
    reload_seconds: float = Field(
        10.0, ge=0, description="How often the service looks for a newer model and a newer "
        "offer policy; 0 = never."
    )
    policy_file: Path | None = Field(
        None, description="The offer policy (policy.yaml) the service starts with; it "
        "replaces the store's policy when its text differs, and POST /admin/reload reads it "
        "again. None: the store's policy, else relevance alone."
    )
    control_share: float = Field(
        0.0, ge=0, le=0.5, description="Share of customers in the universal control group: "
        "the non-personalised baseline on the storefront and no personalised messages."
    )
    control_salt: str = Field("nbo-control", min_length=1, description="Salt of the control "
                              "group's hash; another salt draws another group.")
    control_period: Literal["month", "quarter", "year", "never"] = Field(
        "quarter", description="How often the control group is drawn anew."
    )
    control_mail: Literal["holdout", "baseline"] = Field(
        "holdout", description="What the control group gets by e-mail and the other "
        "messaging channels: nothing (holdout) or non-personalised offers (baseline)."
    )
    explore_share: float = Field(
        0.0, ge=0, le=0.5, description="Share of a ranking's slots given to offers the "
        "feedback log knows little about, chosen by Thompson sampling among those every rule "
        "allows (0: no exploration)."
    )
    explore_min_impressions: int = Field(
        200, ge=1, description="Impressions in the feedback log under which an offer is "
        "explored."
    )
    explore_window_days: float = Field(
        30.0, gt=0, description="Days of the feedback log exploration's posteriors count."
    )
    explore_candidates: int = Field(
        20, ge=1, description="Uncertain offers a ranking explores among: those it rates "
        "best. Fewer keep lists relevant; more let off-policy estimates speak for offers "
        "the serving model rates low."
    )
    explore_seed: int | None = Field(
        None, description="Seed of exploration's draws, for a reproducible simulation; None: "
        "fresh draws in every process."
    )
    console_session_hours: float = Field(
        8.0, gt=0, le=24 * 30, description="How long a console login lasts (the cookie and "
        "the store's record of it).")
    console_secure_cookie: bool = Field(
        True, description="Mark the console's cookies Secure: browsers send them over HTTPS "
        "and to localhost only. Turn off only behind a proxy that speaks plain HTTP to "
        "browsers on a trusted network.")
    decision_log_days: float = Field(
        90.0, ge=0, description="Days the decision log keeps each served list (0: nothing "
        "is logged)."
    )
    trigger_seconds: float = Field(
        60.0, ge=0, description="How often the service runs a pass of the offer policy's "
        "triggers (one process at a time does, under a lease in the store); 0 = never, "
        "for a service that leaves them to POST /admin/triggers/run."
    )
    trigger_webhook_url: str | None = Field(
        None, description="Where sent trigger decisions are posted, signed with "
        "NBO_TRIGGER_WEBHOOK_SECRET; None: only the feed GET /triggers."
    )
    trigger_webhook_secret: str = Field(
        "", description="Key of the webhook's HMAC-SHA256 signature (X-Nbo-Signature); at "
        "least 16 characters where a webhook URL is set."
    )
    gc_freeze: bool = Field(
        True, description="Move the loaded model and libraries out of the garbage collector's "
        "scans after start (avoids collection pauses of tens of ms on requests)."
    )
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="A request still unanswered after this long gets 504. BentoML "
        "keeps each request's timer, and what it references, alive this long, so a long "
        "timeout means many live objects and long collection pauses at high request rates."
    )
    tracing: bool = Field(
        False, description="Open an OpenTelemetry span per request, for a tracing exporter "
        "configured in BentoML's own configuration; off, requests skip the tracing middleware."
    )
    max_bad_share: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Share of bad rows in any table above which a data job fails.",
    )

    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.home.resolve() / 'optuna.db'}"

    def consent_url(self) -> str:
        return self.consent_db_url or f"sqlite:///{self.home.resolve() / 'consent.db'}"

    def local_erasure_key(self) -> str:
        """NBO_ERASURE_KEY, else the key in NBO_HOME/erasure.key, made on first use (owner
        read-only): for the demo and the notebooks on one machine, not for a deployment."""
        if self.erasure_key:
            return self.erasure_key
        path = self.home / "erasure.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        return path.read_text().strip()

    def current_time(self) -> datetime:
        """The pinned ``now`` as naive UTC, else the wall clock."""
        if self.now is None:
            return datetime.now(UTC).replace(tzinfo=None)
        if self.now.tzinfo is not None:
            return self.now.astimezone(UTC).replace(tzinfo=None)
        return self.now


def quiet_third_parties() -> None:
    """Environment every nbo entry point sets before the numeric libraries load."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # the project environment is managed by uv and has no pip for MLflow to ask
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
