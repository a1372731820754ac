"""Workers as the database knows them (table `workers`), and what that says about a queued job.

A worker registers at start (its queues, device kind, GPU count), refreshes `last_seen` every
KD_WORKER_HEARTBEAT_SECONDS and removes its row at a clean stop; a killed worker's row simply stops
being refreshed and counts as gone after KD_WORKER_STALE_SECONDS. Rows unseen for FORGET_AFTER are
deleted at the next registration. Like lifecycle.py, nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, literal, or_, select, tuple_, update
from sqlalchemy.orm import Session

from jobs.routing import CPU_QUEUE, CUDA_QUEUE_PREFIX, describe, queue_for
from jobs.tables import QUEUED, Job, UTCDateTime, Worker, utcnow

FORGET_AFTER = timedelta(days=1)  # a worker row unseen this long is deleted


def register(session: Session, *, name: str, hostname: str, pid: int, queues: list[str], device: str,
             gpus: int, now: datetime | None = None) -> None:
    """Insert or replace this worker's row (a restarted worker with the same name starts afresh)."""
    now = now or utcnow()
    session.execute(delete(Worker).where(or_(Worker.name == name,
                                             Worker.last_seen < literal(now - FORGET_AFTER, UTCDateTime()))))
    session.add(Worker(name=name, hostname=hostname, pid=pid, queues=list(queues), device=device, gpus=gpus,
                       started_at=now, last_seen=now))
    session.flush()


def heartbeat(session: Session, *, name: str, now: datetime | None = None) -> bool:
    """Refresh last_seen; False when the row is gone (deleted as forgotten): register again."""
    now = now or utcnow()
    return session.execute(update(Worker).where(Worker.name == name).values(last_seen=now)).rowcount == 1


def deregister(session: Session, *, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))


def live(session: Session, *, stale_seconds: float, now: datetime | None = None) -> list[Worker]:
    """Workers seen within the last `stale_seconds`, by name."""
    now = now or utcnow()
    cutoff = literal(now - timedelta(seconds=stale_seconds), UTCDateTime())
    return list(session.scalars(select(Worker).where(Worker.last_seen >= cutoff).order_by(Worker.name)))


def live_queues(session: Session, *, stale_seconds: float, now: datetime | None = None) -> set[str]:
    return {q for w in live(session, stale_seconds=stale_seconds, now=now) for q in w.queues}


def _on_queue(queue: str):
    """SQL condition: the job's resolved spec routes it to `queue` (jobs/routing.py, in SQL)."""
    device = func.coalesce(Job.spec["resources"]["device"].as_string(), "cpu")
    if queue == CPU_QUEUE:
        return device == "cpu"
    gpus = int(queue.removeprefix(CUDA_QUEUE_PREFIX))
    return and_(device == "cuda", func.coalesce(Job.spec["resources"]["gpus"].as_integer(), 1) == gpus)


def queue_position(session: Session, *, job: Job) -> int:
    """How many queued jobs on the job's queue are older than it (created earlier; ties by id)."""
    stmt = (select(func.count()).select_from(Job)
            .where(Job.status == QUEUED, _on_queue(queue_for(job.spec)),
                   tuple_(Job.created_at, Job.id) < tuple_(literal(job.created_at, UTCDateTime()), job.id)))
    return int(session.scalar(stmt))


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    position: int
    waiting_reason: str | None


def queue_status(session: Session, *, job: Job, stale_seconds: float, now: datetime | None = None) -> QueueStatus:
    """Where a queued job stands: its queue, its position there, and why it may never start."""
    position = queue_position(session, job=job)
    return QueueStatus(queue_for(job.spec), position,
                       waiting_reason(job.spec, live_queues(session, stale_seconds=stale_seconds, now=now)))


def waiting_reason(spec: dict | None, live: set[str] | frozenset[str]) -> str | None:
    """Why a queued job with this spec may never start, given the queues live workers serve; None if one does."""
    queue = queue_for(spec)
    if queue in live:
        return None
    return (f"no live worker serves {describe(spec)} (queue {queue}); it starts when a worker that "
            f"serves {queue} is running")
