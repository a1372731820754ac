"""Request and response shapes of /v1/webhooks."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from api.schemas.examples import WEBHOOK_EXAMPLE
from jobs.tables import JOB_EVENT_TYPES
from jobs.webhooks import MAX_URL_LENGTH, SECRET_DISPLAY_LENGTH

DEFAULT_PREVIOUS_SECRET_SECONDS = 24 * 3600
MAX_PREVIOUS_SECRET_SECONDS = 7 * 24 * 3600
EventType = Enum("EventType", {name.replace(".", "_"): name for name in JOB_EVENT_TYPES}, type=str)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [WEBHOOK_EXAMPLE]})

    url: StrictStr = Field(max_length=MAX_URL_LENGTH,
                     description="http or https; no credentials or fragment. Loopback, private, link-local and other "
                                 "non-public destinations are refused, here and after DNS resolution on every "
                                 "delivery, unless the operator allows them (KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS)")
    events: list[EventType] = Field(default_factory=lambda: list(EventType), min_length=1,
                                    max_length=len(JOB_EVENT_TYPES) * 4,
                                    description="the events to send; default: all of them")


class WebhookOut(BaseModel):
    id: str
    object: str = "webhook"
    url: str
    events: list[EventType]
    secret_prefix: str = Field(description="the signing secret's first characters, to tell it apart; the secret "
                                           "itself is shown only in the answer to the webhook's creation")
    previous_secret_expires_at: datetime | None = Field(
        None, description="after a rotation: until when deliveries also carry a signature made with the previous "
                          "secret")
    created_at: datetime

    @classmethod
    def from_row(cls, row) -> "WebhookOut":
        return cls(id=row.id, url=row.url, events=row.events, secret_prefix=row.secret[:SECRET_DISPLAY_LENGTH],
                   previous_secret_expires_at=row.previous_secret_expires_at if row.previous_secret else None,
                   created_at=row.created_at)


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (whsec_...): HMAC-SHA256 key of the KD-Signature header. "
                                    "Shown only in this answer (to a creation or a rotation): keep it")

    @classmethod
    def from_row(cls, row) -> "WebhookCreated":
        return cls(**WebhookOut.from_row(row).model_dump(), secret=row.secret)


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_secret_valid_seconds: StrictInt = Field(
        DEFAULT_PREVIOUS_SECRET_SECONDS, ge=0, le=MAX_PREVIOUS_SECRET_SECONDS,
        description="how long deliveries keep a second signature made with the secret being replaced, so receivers "
                    "can switch over (0: stop at once; at most 7 days)")


class WebhookList(BaseModel):
    object: str = "list"
    data: list[WebhookOut]
    has_more: bool


class AttemptOut(BaseModel):
    number: int
    started_at: datetime | None = None
    duration_ms: int | None = None
    address: str | None = Field(None, description="the address the attempt connected to (or refused)")
    status_code: int | None = Field(None, description="the receiver's HTTP status; null when none came back")
    error: str | None = Field(None, description="why the attempt did not succeed; null after a 2xx")


class DeliveryOut(BaseModel):
    id: str
    object: str = "webhook_delivery"
    webhook_id: str
    event_id: str = Field(description="the event's id, the same on every attempt and for every webhook it goes to: "
                                      "a receiver that has seen it can answer 2xx and do nothing")
    event_type: str
    job_id: str | None = None
    status: Literal["pending", "succeeded", "failed"]
    attempt_count: int
    next_attempt_at: datetime | None = Field(None, description="when the next attempt is due (pending only)")
    last_status_code: int | None = None
    last_error: str | None = None
    attempts: list[AttemptOut] = Field(description="every attempt, oldest first")
    payload: dict[str, Any] = Field(description="the event as posted (the body of every attempt)")
    created_at: datetime
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row) -> "DeliveryOut":
        return cls(id=row.id, webhook_id=row.webhook_id, event_id=row.event_id, event_type=row.event_type,
                   job_id=row.job_id, status=row.status, attempt_count=row.attempt_count,
                   next_attempt_at=row.next_attempt_at, last_status_code=row.last_status_code,
                   last_error=row.last_error, attempts=[AttemptOut(**a) for a in row.attempts or []],
                   payload=json.loads(row.body), created_at=row.created_at, finished_at=row.finished_at)


class DeliveryList(BaseModel):
    object: str = "list"
    data: list[DeliveryOut]
    has_more: bool
