"""The database tables, as SQLAlchemy 2 typed models.

The schema is created and changed only by Alembic (migrations/); these classes must match the
newest revision (tests/jobs/test_migrations.py compares them). Portable types throughout: string
ids with a prefix ("job_<hex>"), JSON (JSONB on PostgreSQL), timezone-aware UTC timestamps.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelling", "cancelled")
JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
ACTIVE_STATUSES = (RUNNING, CANCELLING)  # a worker holds a lease
TERMINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
METRIC_RUNS = ("student", "baseline")
INFO, WARNING, ERROR = "info", "warning", "error"
EVENT_LEVELS = (INFO, WARNING, ERROR)  # every event has one (revision 0004)
IN_FLIGHT, DONE = "in_flight", "done"
JOB_EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled")  # what a webhook can subscribe to
PING = "ping"  # POST /v1/webhooks/{id}/test: to that webhook only
PENDING = "pending"
DELIVERY_STATUSES = (PENDING, SUCCEEDED, FAILED)
IDEMPOTENCY_STATUSES = (IN_FLIGHT, DONE)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """"job_3f9c…": a prefix that names the kind, then 96 random bits."""
    return f"{prefix}_{secrets.token_hex(12)}"


def could_be_id(value: str) -> bool:
    """Whether `value` has the shape of an id we issue. Anything else (a NUL byte, 10 kB of text)
    names no row, and is answered as not found without asking the database."""
    return 0 < len(value) <= 64 and value.isascii() and value.replace("_", "").isalnum()


class UTCDateTime(TypeDecorator):
    """A timezone-aware datetime, always stored and returned in UTC. Naive values are refused:
    they are a bug (local time) waiting to happen. SQLite has no timezone type, so the value is
    stored as naive UTC text, whose fixed format compares correctly as a string."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# none_as_null: a Python None is SQL NULL, not the JSON literal null.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only the sha256 of a key is stored; `prefix` (its first 12 characters) is for display."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_files_tenant_sha256", "tenant_id", "sha256"),  # GET /v1/files?sha256= (kd distill's reuse)
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))  # "teacher", "dataset", "student_init"
    format: Mapped[str] = mapped_column(String(32))  # "safetensors", "onnx", "npz", "parquet", "csv"
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what inspection found: N, shapes, classes
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),  # the quota's count (api/quotas.py)
        Index("ix_jobs_status_created", "status", "created_at", "id"),  # a queued job's position, the reaper
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in JOB_STATUSES)})", name="status"),
        CheckConstraint("attempt >= 0", name="attempt"),
        CheckConstraint("max_attempts >= 1", name="max_attempts"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    spec: Mapped[dict[str, Any]]
    attempt: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    lease_until: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]  # the reaper's last send; None: only the API's, at created_at
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """The job's log, ordered by `seq` (1, 2, 3… per job, no gaps); SSE uses seq as the event id."""

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint(f"level IN ({', '.join(repr(v) for v in EVENT_LEVELS)})", name="level"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int]
    attempt: Mapped[int]
    type: Mapped[str] = mapped_column(String(64))  # "status", "log", "warning", "checkpoint", …
    # info, warning (a suspect result, a damaged checkpoint skipped) or error (the job failed)
    level: Mapped[str] = mapped_column(String(16), default=INFO, server_default=INFO)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobMetric(Base):
    """One row per (job, run, epoch): CE, KL, total loss, accuracies, agreement… in `values`."""

    __tablename__ = "job_metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "run", "epoch"),
        CheckConstraint(f"run IN ({', '.join(repr(r) for r in METRIC_RUNS)})", name="run"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    run: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int]
    values: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A file a job produced; one per (job, kind), a newer one replaces it."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "kind"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("art"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))  # student_safetensors, student_onnx, checkpoint, summary
    storage_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """An `Idempotency-Key` a tenant sent with a POST: claimed (`in_flight`) before the work starts,
    then `done` with the response to replay, in the transaction that wrote the job or file row.

    `fingerprint` is the sha256 of the request (None while an upload is still arriving);
    `expires_at` is when the row stops counting (an expired row is ignored, then replaced or
    purged). `response_body` is plain JSON, not JSONB, so PostgreSQL keeps its key order and a
    replay is byte-for-byte the first response."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in IDEMPOTENCY_STATUSES)})", name="status"),
        CheckConstraint(f"status = '{IN_FLIGHT}' OR (response_status IS NOT NULL AND response_body IS NOT NULL)",
                        name="response"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=IN_FLIGHT)
    response_status: Mapped[int | None]
    response_body: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class Worker(Base):
    """A worker process that advertises what it serves: written at start, refreshed every
    KD_WORKER_HEARTBEAT_SECONDS (`last_seen`), removed at a clean stop. Live = seen within
    KD_WORKER_STALE_SECONDS. The API reads it to tell a queued job that nobody serves its queue."""

    __tablename__ = "workers"
    __table_args__ = (
        Index("ix_workers_last_seen", "last_seen"),
        CheckConstraint("device IN ('cpu', 'cuda')", name="device"),
        CheckConstraint("gpus >= 0", name="gpus"),
    )

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery hostname: kd-worker-<pid>@<host>
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    queues: Mapped[list[str]] = mapped_column(JSONType)  # the queues it consumes
    device: Mapped[str] = mapped_column(String(16))  # "cuda" when it has CUDA devices, else "cpu"
    gpus: Mapped[int]  # CUDA devices it sees
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """A tenant's endpoint for job events. `secret` signs every delivery (HMAC-SHA256); it is shown
    to the tenant once, in the answer to its creation (or rotation). Deleting the row deletes its
    deliveries."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    # after a rotation, the secret before it also signs deliveries until this time (a second v1=)
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None]
    events: Mapped[list[str]] = mapped_column(JSONType)  # some of JOB_EVENT_TYPES
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: the transactional outbox. The row is inserted in the transaction
    that gives the job its terminal status (jobs/lifecycle.py), so an event exists exactly when the
    status does; the worker's sender (worker/webhook_sender.py) claims it when `next_attempt_at` is
    due, posts `body` (the same bytes on every attempt) and records each attempt in `attempts`.

    `status` pending -> succeeded (a 2xx) or failed (no 2xx after KD_WEBHOOK_MAX_ATTEMPTS);
    `next_attempt_at` is None once it is finished. While an attempt is in flight its claim pushes
    `next_attempt_at` past the attempt's timeout, so a sender that died mid-attempt is taken over."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at", "id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in DELIVERY_STATUSES)})", name="status"),
        CheckConstraint("attempt_count >= 0", name="attempt_count"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whd"))
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # the same for every webhook the event goes to, and for a redelivery (a new row: POST .../retry)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(40))  # None for a ping
    body: Mapped[str] = mapped_column(Text)  # the JSON posted, byte for byte
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempt_count: Mapped[int] = mapped_column(default=0)
    # [{"number", "started_at", "duration_ms", "address", "status_code", "error"}], oldest first
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
