"""The one settings object, read from `KD_*` environment variables.

    from jobs.settings import settings      # the process-wide instance
    from jobs.settings import Settings      # tests build their own: Settings(data_dir=tmp_path)

Every variable, its default and meaning is in README.md's Configuration table (one place; the
field comments below say only what the code needs). The defaults are the embedded mode: nothing
to install, everything under `data_dir`.

KD_ARTIFACT_URL is checked at construction (ValueError): scheme s3, a valid bucket name, a prefix of
key segments; so is KD_S3_ENDPOINT_URL (http or https), and an access key id without its secret
(or the reverse), or KD_ARTIFACT_DIR set next to KD_ARTIFACT_URL, is refused.

In production mode the embedded defaults are refused at construction (ValueError): a SQLite
database, an SQLAlchemy/memory/filesystem broker, or a bootstrap key shorter than 32 characters.
Nothing else in the project reads os.environ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
MIN_PRODUCTION_KEY_LENGTH = 32
# Broker transports that need no server: fine on a laptop, wrong when workers span machines.
EMBEDDED_BROKER_SCHEMES = ("sqla+", "memory", "filesystem")
MIB = 1024**2
MAX_WEBHOOK_ATTEMPTS = 50  # every attempt of a delivery is kept in its row (webhook_deliveries.attempts)
S3_MIN_PART_BYTES = 5 * MIB
# S3's bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_", extra="ignore")

    mode: Literal["embedded", "production"] = "embedded"
    data_dir: Path = Path("var")
    database_url: str | None = None  # None: sqlite:///{data_dir}/kd.sqlite3
    broker_url: str | None = None  # None: sqla+sqlite:///{data_dir}/broker.sqlite3
    artifact_dir: Path | None = None  # None: {data_dir}/artifacts
    artifact_url: str | None = None  # s3://bucket/prefix: the S3 store (jobs/artifact_store/s3.py)
    s3_endpoint_url: str | None = None  # None: AWS S3
    s3_access_key_id: str | None = None  # None: boto3's credential chain
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_part_bytes: int = Field(default=8 * MIB, ge=S3_MIN_PART_BYTES)
    artifact_cache_dir: Path | None = None  # None: {data_dir}/cache/artifacts
    max_upload_bytes: int = Field(default=GIB, gt=0)
    # An upload body that sends nothing for this long is cut (408) and its temp file removed.
    upload_idle_timeout_seconds: float = Field(default=30, gt=0)
    # Open SSE event streams per tenant in one API process (one more is a 429).
    max_streams_per_tenant: int = Field(default=8, ge=1)
    # PostgreSQL sessions of the service: a statement waiting this long for a lock fails, and a
    # transaction left idle this long is ended by the server (no bug can hold a lock for good).
    db_lock_timeout_ms: int = Field(default=10_000, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    # A user's ONNX graph runs only in a child process with these limits (kdcore/onnx_sandbox.py).
    # The API's upload check (load the graph, one probe run when the class count is symbolic):
    onnx_check_memory_bytes: int = Field(default=4 * GIB, gt=0)  # the child's address space
    onnx_check_timeout_seconds: float = Field(default=30, gt=0)
    # Uploads inspected at once per API process (ONNX checks and dataset/weight scans alike); one
    # more waits up to file_check_wait_seconds for a turn, then is a 503 with Retry-After.
    max_concurrent_file_checks: int = Field(default=2, ge=1)
    file_check_wait_seconds: float = Field(default=60, gt=0)
    # The worker's ONNX teacher: address space (not applied with CUDA), one batch of up to 1024
    # rows, onnxruntime threads (None: as many as PyTorch uses).
    teacher_memory_bytes: int = Field(default=16 * GIB, gt=0)
    teacher_batch_timeout_seconds: float = Field(default=600, gt=0)
    teacher_threads: int | None = Field(default=None, ge=1)
    # Every job's wall-clock limit, from its first start (resumed attempts included): past it the
    # job stops at the next step boundary (or its ONNX teacher is killed) and fails `time_limit`.
    job_time_limit_seconds: float = Field(default=24 * 3600, gt=0)
    bootstrap_api_key: SecretStr | None = None  # ensured at start-up for tenant "default"
    lease_seconds: int = Field(default=60, gt=0)
    heartbeat_seconds: float = Field(default=5, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    reaper_interval: float = Field(default=30, gt=0)
    queued_requeue_after: float = Field(default=60, gt=0)
    broker_visibility_timeout: int = Field(default=3600, gt=0)  # Redis brokers only (worker/celery_app.py)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(default=1, ge=1)
    # uvicorn's access log (a line per request on stderr). Off behind a proxy that logs requests itself:
    # the line is about 0.06 ms of API CPU per request, a fifth of /healthz's (bench/RESULTS.md, B4).
    api_access_log: bool = True
    worker_queues: str | None = None  # comma-separated; None: every queue this machine can serve (jobs/routing.py)
    worker_heartbeat_seconds: float = Field(default=10, gt=0)
    worker_stale_seconds: float = Field(default=30, gt=0)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    idempotency_in_flight_seconds: int = Field(default=3600, gt=0)
    quota_stored_bytes: int = Field(default=10 * GIB, gt=0)  # per tenant, uploaded files only
    quota_concurrent_jobs: int = Field(default=4, gt=0)  # per tenant: queued + running + cancelling
    # Webhooks (jobs/webhooks.py; the worker's sender, worker/webhook_sender.py). Off by default, a
    # destination that is (or resolves to) a loopback, private, link-local or otherwise non-global
    # address is refused at registration and at every delivery: a webhook URL must not reach inside.
    webhook_allow_private_networks: bool = False
    webhooks_per_tenant: int = Field(default=10, ge=1)
    webhook_timeout_seconds: float = Field(default=10, gt=0)  # connect, and each read/write, of one attempt
    webhook_max_attempts: int = Field(default=10, ge=1, le=MAX_WEBHOOK_ATTEMPTS)
    webhook_retry_base_seconds: float = Field(default=30, gt=0)  # attempt n+1 waits base * 2**(n-1)...
    webhook_retry_max_seconds: float = Field(default=3600, gt=0)  # ...but never longer than this
    webhook_poll_seconds: float = Field(default=2, gt=0)  # how often each worker's sender looks for due ones
    webhook_pending_limit: int = Field(default=20, ge=1)  # a ping or redelivery past this many pending: 429
    webhook_delivery_retention_seconds: float = Field(default=30 * 24 * 3600, gt=0)  # finished ones, then deleted

    @property
    def worker_queue_list(self) -> list[str] | None:
        """KD_WORKER_QUEUES as a list; None when unset or empty."""
        names = [q.strip() for q in (self.worker_queues or "").split(",") if q.strip()]
        return names or None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir}/kd.sqlite3"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir}/broker.sqlite3"

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir if self.artifact_dir is not None else self.data_dir / "artifacts"

    @property
    def artifact_cache_path(self) -> Path:
        return self.artifact_cache_dir if self.artifact_cache_dir is not None else self.data_dir / "cache" / "artifacts"

    @property
    def artifact_bucket_and_prefix(self) -> tuple[str, str]:
        """(bucket, prefix) of KD_ARTIFACT_URL (checked at construction)."""
        assert self.artifact_url is not None
        parts = urlsplit(self.artifact_url)
        return parts.netloc, parts.path.strip("/")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        self._check_artifact_store()
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"KD_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be shorter than "
                f"KD_LEASE_SECONDS ({self.lease_seconds}), or every lease expires between heartbeats")
        if self.worker_heartbeat_seconds >= self.worker_stale_seconds:
            raise ValueError(
                f"KD_WORKER_HEARTBEAT_SECONDS ({self.worker_heartbeat_seconds:g}) must be shorter than "
                f"KD_WORKER_STALE_SECONDS ({self.worker_stale_seconds:g}), or live workers look gone")
        key = self.bootstrap_api_key
        if key is not None and not _KEY_FORMAT.fullmatch(key.get_secret_value()):
            raise ValueError("KD_BOOTSTRAP_API_KEY must look like the keys the service makes: 'kd_' and then "
                             "letters, digits, '-' or '_' (e.g. kd_ plus `python -c \"import secrets; "
                             "print(secrets.token_urlsafe(32))\"`); any other key could never authenticate")
        if self.mode == "production":
            self._refuse_embedded_defaults()
        return self

    def _check_artifact_store(self) -> None:
        if self.artifact_url is not None:
            parts = urlsplit(self.artifact_url)
            if parts.scheme != "s3":
                raise ValueError(f"KD_ARTIFACT_URL {self.artifact_url!r}: the scheme must be s3 (s3://bucket/prefix)")
            if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
                raise ValueError(f"KD_ARTIFACT_URL {self.artifact_url!r}: {parts.netloc!r} is not a valid bucket "
                                 "name (3-63 lowercase letters, digits, '.', '-')")
            if parts.query or parts.fragment or "@" in self.artifact_url:
                raise ValueError(f"KD_ARTIFACT_URL {self.artifact_url!r}: no credentials, query or fragment; "
                                 "credentials go in KD_S3_ACCESS_KEY_ID / KD_S3_SECRET_ACCESS_KEY")
            prefix = parts.path.strip("/")
            if prefix and not all(_PREFIX_SEGMENT.fullmatch(seg) for seg in prefix.split("/")):
                raise ValueError(f"KD_ARTIFACT_URL {self.artifact_url!r}: the prefix {prefix!r} must be "
                                 "slash-separated segments of letters, digits, '.', '_', '-' (none empty or hidden)")
            if self.artifact_dir is not None:
                raise ValueError("KD_ARTIFACT_DIR and KD_ARTIFACT_URL are both set; the store is one or the other")
        if self.s3_endpoint_url is not None:
            endpoint = urlsplit(self.s3_endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
                raise ValueError(f"KD_S3_ENDPOINT_URL {self.s3_endpoint_url!r}: must be http(s)://host[:port]")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("KD_S3_ACCESS_KEY_ID and KD_S3_SECRET_ACCESS_KEY go together: set both or neither")

    def _refuse_embedded_defaults(self) -> None:
        problems = []
        if self.db_url.startswith("sqlite"):
            problems.append("KD_DATABASE_URL is SQLite; set a PostgreSQL URL (postgresql+psycopg://...)")
        if self.celery_broker_url.startswith(EMBEDDED_BROKER_SCHEMES):
            problems.append("KD_BROKER_URL is an embedded transport; set a Redis URL (redis://...)")
        key = self.bootstrap_api_key
        if key is not None and len(key.get_secret_value()) < MIN_PRODUCTION_KEY_LENGTH:
            problems.append(f"KD_BOOTSTRAP_API_KEY is shorter than {MIN_PRODUCTION_KEY_LENGTH} characters")
        if problems:
            raise ValueError("KD_MODE=production refuses embedded defaults: " + "; ".join(problems))


_KEY_FORMAT = re.compile(r"kd_[A-Za-z0-9_-]+")  # jobs/api_keys.py: KEY_PREFIX + token_urlsafe

settings = Settings()
