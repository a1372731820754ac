"""The worker process's composition root: settings, one database engine, one artifact store and
this worker's name, built once (`WorkerContext.build`) and handed to the job runner, the reaper
and the presence thread, as the API's `create_app` does for routes.

The engine carries the same PostgreSQL session limits as the API's (`KD_DB_LOCK_TIMEOUT_MS`,
`KD_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`): a worker stalled inside a transaction cannot hold a job
row's lock for good. The name is the Celery hostname and the key of the worker's row in `workers`;
it is also what a job's lease records as its owner (`jobs.worker`), so the two join.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from jobs.artifact_store import ArtifactStore, make_store
from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings, settings as process_settings


def worker_name() -> str:
    """This worker process's name: its Celery hostname, its `workers` row, its leases' owner."""
    return f"kd-worker-{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class WorkerContext:
    cfg: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    name: str

    @classmethod
    def build(cls, cfg: Settings | None = None, *, store: ArtifactStore | None = None,
              name: str | None = None) -> "WorkerContext":
        cfg = cfg or process_settings
        engine = make_engine(cfg.db_url, lock_timeout_ms=cfg.db_lock_timeout_ms,
                             idle_in_transaction_timeout_ms=cfg.db_idle_in_transaction_timeout_ms)
        return cls(cfg=cfg, sessions=make_sessionmaker(engine), store=store or make_store(cfg),
                   name=name or worker_name())


_current: WorkerContext | None = None


def current() -> WorkerContext:
    """The process's context: the one `python -m worker` built at start, else built on first use
    (a task run by a bare `celery worker`)."""
    global _current
    if _current is None:
        _current = WorkerContext.build()
    return _current


def install(ctx: WorkerContext) -> WorkerContext:
    global _current
    _current = ctx
    return ctx
