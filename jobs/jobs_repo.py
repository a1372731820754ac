"""Jobs as the tenant sees them: create, read, list, and the rows a run produced (events,
metrics, artifacts). Every query here filters by tenant; the state changes are in lifecycle.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import NotFound
from jobs.pagination import MAX_PAGE_SIZE, newest_first_page
from jobs.tables import JOB_STATUSES, QUEUED, Artifact, Job, JobEvent, JobMetric, new_id
from jobs.tenant_rows import owned

MAX_EVENTS_PER_READ = 1000


def create(session: Session, *, tenant_id: str, spec: dict[str, Any], max_attempts: int) -> Job:
    """A queued job. The caller commits, then enqueues the id (the reaper sends it again if that send was
    lost: lifecycle.find_jobs_to_enqueue)."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    job = Job(id=new_id("job"), tenant_id=tenant_id, status=QUEUED, spec=spec, attempt=0,
              max_attempts=max_attempts, cancel_requested=False)
    session.add(job)
    session.flush()
    return job


def get(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """The job, re-read from the database (a long-lived session, e.g. an SSE loop, sees changes)."""
    return owned(session, Job, tenant_id=tenant_id, row_id=job_id, noun="job", fresh=True)


def load_for_worker(session: Session, *, job_id: str) -> Job:
    """The job by id alone, for the worker and the reaper, which receive only an id from the
    broker. Never call this with an id that came from a tenant's request."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


def status_and_spec(session: Session, *, job_ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """{job id: (status, spec)} for the reaper, which routes each job it enqueues again by its spec.
    By id alone, like `load_for_worker`: never with ids that came from a tenant's request."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.status, Job.spec).where(Job.id.in_(job_ids))).all()
    return {row.id: (row.status, row.spec) for row in rows}


def list_jobs(session: Session, *, tenant_id: str, limit: int = 20, after: str | None = None,
              status: str | None = None) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last id of the previous page. Returns (rows, has_more)."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        if status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}")
        stmt = stmt.where(Job.status == status)
    return newest_first_page(session, stmt, Job, tenant_id=tenant_id, after=after, limit=limit)


def events(session: Session, *, tenant_id: str, job_id: str, after_seq: int = 0,
           limit: int = MAX_PAGE_SIZE) -> list[JobEvent]:
    """The job's events with seq > after_seq, in order (SSE resumes from Last-Event-ID = seq)."""
    get(session, tenant_id=tenant_id, job_id=job_id)
    limit = max(1, min(limit, MAX_EVENTS_PER_READ))
    return list(session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq).limit(limit)))


def metrics(session: Session, *, tenant_id: str, job_id: str) -> list[JobMetric]:
    """Every metric row of the job, by run ('baseline' before 'student') then epoch."""
    get(session, tenant_id=tenant_id, job_id=job_id)
    return list(session.scalars(
        select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.run, JobMetric.epoch)))


def artifacts(session: Session, *, tenant_id: str, job_id: str) -> list[Artifact]:
    get(session, tenant_id=tenant_id, job_id=job_id)
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.kind)))


def get_artifact(session: Session, *, tenant_id: str, job_id: str, kind: str) -> Artifact:
    get(session, tenant_id=tenant_id, job_id=job_id)
    artifact = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind))
    if artifact is None:
        raise NotFound(f"job {job_id!r} has no {kind!r} artifact")
    return artifact
