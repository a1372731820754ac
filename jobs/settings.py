"""The one settings object, read from `KD_*` environment variables.

    from jobs.settings import settings      # the process-wide instance
    from jobs.settings import Settings      # tests build their own: Settings(data_dir=tmp_path)

Defaults (the embedded mode: nothing to install, everything under `data_dir`):

| variable                   | default                                   |
|----------------------------|-------------------------------------------|
| KD_MODE                    | "embedded" (or "production")              |
| KD_DATA_DIR                | var                                       |
| KD_DATABASE_URL            | sqlite:///{data_dir}/kd.sqlite3           |
| KD_BROKER_URL              | sqla+sqlite:///{data_dir}/broker.sqlite3  |
| KD_ARTIFACT_DIR            | {data_dir}/artifacts                      |
| KD_MAX_UPLOAD_BYTES        | 1073741824 (1 GiB)                        |
| KD_BOOTSTRAP_API_KEY       | unset (no key is created at start-up)     |
| KD_LEASE_SECONDS           | 60                                        |
| KD_HEARTBEAT_SECONDS       | 5                                         |
| KD_MAX_ATTEMPTS            | 3                                         |
| KD_REAPER_INTERVAL         | 30 (seconds)                              |
| KD_QUEUED_REQUEUE_AFTER    | 60 (seconds a queued job may wait unclaimed before it is enqueued again) |
| KD_BROKER_VISIBILITY_TIMEOUT | 3600 (seconds Redis waits for an unacknowledged job message before delivering it again) |
| KD_API_HOST                | 127.0.0.1                                 |
| KD_API_PORT                | 8000                                      |
| KD_API_WORKERS             | 1                                         |
| KD_WORKER_CONCURRENCY      | 1                                         |
| KD_IDEMPOTENCY_TTL_SECONDS | 86400 (seconds a finished request's Idempotency-Key is kept and replayed) |
| KD_IDEMPOTENCY_IN_FLIGHT_SECONDS | 3600 (seconds before a key held by a request that never finished, e.g. the API died, may be taken over) |
| KD_QUOTA_STORED_BYTES      | 10737418240 (10 GiB of uploaded files per tenant) |
| KD_QUOTA_CONCURRENT_JOBS   | 4 (unfinished jobs per tenant: queued, running or cancelling) |

In production mode the embedded defaults are refused at construction (ValueError): a SQLite
database, an SQLAlchemy/memory/filesystem broker, or a bootstrap key shorter than 32 characters.
Nothing else in the project reads os.environ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
MIN_PRODUCTION_KEY_LENGTH = 32
# Broker transports that need no server: fine on a laptop, wrong when workers span machines.
EMBEDDED_BROKER_SCHEMES = ("sqla+", "memory", "filesystem")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_", extra="ignore")

    mode: Literal["embedded", "production"] = "embedded"
    data_dir: Path = Path("var")
    database_url: str | None = None  # None: sqlite:///{data_dir}/kd.sqlite3
    broker_url: str | None = None  # None: sqla+sqlite:///{data_dir}/broker.sqlite3
    artifact_dir: Path | None = None  # None: {data_dir}/artifacts
    max_upload_bytes: int = Field(default=GIB, gt=0)
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
    worker_concurrency: int = Field(default=1, ge=1)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    idempotency_in_flight_seconds: int = Field(default=3600, gt=0)
    quota_stored_bytes: int = Field(default=10 * GIB, gt=0)  # per tenant, uploaded files only
    quota_concurrent_jobs: int = Field(default=4, gt=0)  # per tenant: queued + running + cancelling

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir}/kd.sqlite3"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir}/broker.sqlite3"

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir if self.artifact_dir is not None else self.data_dir / "artifacts"

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"KD_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be shorter than "
                f"KD_LEASE_SECONDS ({self.lease_seconds}), or every lease expires between heartbeats")
        if self.mode == "production":
            self._refuse_embedded_defaults()
        return self

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


settings = Settings()
