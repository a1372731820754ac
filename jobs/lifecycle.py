"""The job state machine: claim, lease, fenced writes, transitions.

The database row is the truth; the broker only wakes workers (ARCHITECTURE.md). Every change below
is one conditional UPDATE (or a fenced UPDATE followed by an INSERT in the same transaction), so
two workers, the API and the reaper can race on a job and at most one of them wins each step.

Transitions (anything not listed is refused; the terminal states never change):

    from         to           by
    queued       running      claim                        (attempt 0 -> 1)
    queued       cancelled    request_cancel
    running      running      claim after the lease expired (attempt n -> n+1, fences out n)
    running      cancelling   request_cancel
    running      succeeded    succeed                      (fenced)
    running      failed       fail                         (fenced)
    running      failed       fail_exhausted / claim       (lease expired and attempts spent)
    cancelling   cancelled    finish_cancelled             (fenced)
    cancelling   cancelled    claim                        (lease expired: the worker died mid-cancel)
    cancelling   succeeded    succeed                      (fenced: it finished before it saw the request)
    cancelling   failed       fail                         (fenced)

So a status only moves forward in the order queued < running < cancelling < terminal.

Fencing: `claim` returns the new attempt number; every later write by that worker passes it, and
is guarded by `attempt = :attempt AND status IN ('running', 'cancelling')`. A False (or None)
return means the write changed nothing: the lease was lost to a newer attempt, or the job ended;
the worker must stop at once (`require_lease` turns that into LeaseLost). A fenced write first
updates the job row, which on PostgreSQL locks it until the caller commits, so the INSERTs that
follow (events, metrics, artifacts) cannot interleave with a re-claim or with each other.

Time: `now` is taken from Python (UTC), not from the database, so the same code runs on
PostgreSQL and SQLite and tests can move time forward. All writers must share a clock within a
small fraction of the lease (NTP on every machine); skew shortens or lengthens leases by that much.
Every function accepts `now=` for tests; production code leaves it out.

These functions never commit: the caller commits once at its boundary, and a heartbeat or a
fenced write takes effect only then. Commit right after each worker write (do not hold the
transaction open across training): until the commit, the job row stays locked on PostgreSQL, and
the heartbeat thread, the tenant's cancel and the reaper all wait on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from jobs import webhooks_repo
from jobs.errors import Conflict, LeaseLost, NotFound
from jobs.tables import (
    ACTIVE_STATUSES,
    CANCELLED,
    CANCELLING,
    ERROR,
    EVENT_LEVELS,
    FAILED,
    INFO,
    JOB_STATUSES,
    METRIC_RUNS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    JobMetric,
    UTCDateTime,
    could_be_id,
    new_id,
    utcnow,
)

EXHAUSTED = "max_attempts_exceeded"

# The statements below are written against the tables (SQLAlchemy Core), not the ORM classes: a worker
# makes a few dozen of them per job, and the ORM's bulk UPDATE/INSERT path cost more CPU than the rest
# of a tiny job's writes together (bench/RESULTS.md, B6). Nothing here loads or keeps ORM objects;
# `_update` expires a job a caller's session holds, so it reads the row as changed.
JOBS, EVENTS, METRICS, ARTIFACTS = Job.__table__, JobEvent.__table__, JobMetric.__table__, Artifact.__table__
J, E, M, A = JOBS.c, EVENTS.c, METRICS.c, ARTIFACTS.c


@dataclass(frozen=True)
class HeartbeatResult:
    alive: bool  # False: the lease is lost or the job ended; stop now
    cancel_requested: bool  # True: wind down and call finish_cancelled


def _update(session: Session, *where, returning=(J.id,), **values):
    """One conditional UPDATE of a job; the returned row, or None when no row matched. It may change
    what a fence held in this transaction relied on (status, attempt): the fence is taken again."""
    session.info.pop(_HELD_FENCE, None)
    row = session.execute(update(JOBS).where(*where).values(**values).returning(*returning)).one_or_none()
    if row is not None:
        for obj in [o for o in session.identity_map.values() if isinstance(o, Job)]:
            session.expire(obj)
    return row


def _append_event(session: Session, *, job_id: str, attempt: int, type: str, message: str,
                  data: dict[str, Any] | None, now: datetime, level: str = INFO) -> int:
    """Insert the job's next event. seq = max(seq) + 1 in the same statement; the caller has
    already updated (so locked) the job row, which serialises writers of one job, and
    unique(job_id, seq) would refuse a duplicate if anything slipped through."""
    _check_level(level)
    next_seq = select(func.coalesce(func.max(E.seq), 0) + 1).where(E.job_id == job_id).scalar_subquery()
    stmt = insert(EVENTS).values(job_id=job_id, seq=next_seq, attempt=attempt, type=type, level=level,
                                 message=message, data=data, created_at=now).returning(E.seq)
    return session.execute(stmt).scalar_one()


def _check_level(level: str) -> None:
    if level not in EVENT_LEVELS:
        raise ValueError(f"level must be one of {', '.join(EVENT_LEVELS)}, not {level!r}")


def _status_event(session: Session, *, job_id: str, attempt: int, status: str, message: str,
                  now: datetime, **data: Any) -> None:
    """A status change; `failed` is an error, every other status information. A terminal status also
    queues its webhook deliveries here, in the same transaction (the outbox: jobs/webhooks_repo.py)."""
    _append_event(session, job_id=job_id, attempt=attempt, type="status", message=message,
                  data={"status": status, **data}, now=now, level=ERROR if status == FAILED else INFO)
    if status in TERMINAL_STATUSES:
        webhooks_repo.enqueue_job_event(session, job_id=job_id, status=status, now=now)


# session.info key: (transaction, job id, attempt) of the last fence that passed in that transaction
_HELD_FENCE = "kd_lifecycle_held_fence"


def _transaction(session: Session):
    """The innermost transaction the session is in (a savepoint's own, else the outer one), or None."""
    return session.get_nested_transaction() or session.get_transaction()


def _holds_fence(session: Session, job_id: str, attempt: int) -> bool:
    held = session.info.get(_HELD_FENCE)
    return held is not None and held[0] is _transaction(session) and held[1:] == (job_id, attempt)


def _fence(session: Session, *, job_id: str, attempt: int, now: datetime, returning=None, **values):
    """The guard of every write by a worker: the row still carries its attempt and is active.

    Once a fence passed in a transaction, the job row stays locked by it until the commit (on
    PostgreSQL the UPDATE's row lock; on SQLite the database's write lock), so nobody else can
    re-claim or end the job meanwhile: a later write of the same attempt in that transaction that
    changes nothing on the row itself (an event, a metric, an artifact) is let through without
    another UPDATE. One that changes the row (progress, the lease, a status) still updates it;
    updated_at stays the time of the transaction's first fence unless the status changes. Any
    other UPDATE of a job in the transaction drops what was held."""
    held = _holds_fence(session, job_id, attempt)
    if held and not values and returning is None:
        return (job_id,)
    if not held or "status" in values:
        values["updated_at"] = now
    row = _update(session, J.id == job_id, J.attempt == attempt, J.status.in_(ACTIVE_STATUSES),
                  returning=returning or (J.id,), **values)
    if row is not None and "status" not in values:
        session.info[_HELD_FENCE] = (_transaction(session), job_id, attempt)
    return row


def fence(session: Session, *, job_id: str, attempt: int, now: datetime | None = None,
          progress: dict[str, Any] | None = None) -> bool:
    """Take the fence of `attempt` for the rest of this transaction (updated_at = `now`), writing
    `progress` (as set_progress) in the same UPDATE when given: the worker's first statement in each
    of its transactions, so the fenced writes that follow (events, metrics, artifacts) need no UPDATE
    of their own. False when the lease is lost."""
    values = {} if progress is None else {"progress": progress}
    return _fence(session, job_id=job_id, attempt=attempt, now=now or utcnow(), **values) is not None


def wrote(result: Any) -> bool:
    """Whether a fenced write changed something: its return is neither None nor False."""
    return result is not None and result is not False


def require_lease(ok: bool | int | None, *, job_id: str, attempt: int) -> None:
    """Raise LeaseLost when a fenced write reports that it changed nothing (None or False)."""
    if not wrote(ok):
        raise LeaseLost(f"job {job_id}: attempt {attempt} no longer owns the job (re-claimed by a newer "
                        "attempt, or finished)")


# --- claim and lease -------------------------------------------------------------------------------

def claim(session: Session, *, job_id: str, lease_seconds: float, worker: str,
          now: datetime | None = None) -> int | None:
    """Take the job for `worker`: the new attempt number, or None (someone else owns it, or it
    is finished, or it just became cancelled/failed here). Safe to call for a duplicate message."""
    now = now or utcnow()
    # Only 'queued', or 'running' whose lease expired, may be claimed: a job that is (or turns)
    # 'cancelling' never goes back to running. The likely case first: one UPDATE for a fresh job.
    claimed = _update(
        session,
        J.id == job_id,
        J.attempt < J.max_attempts,
        or_(J.status == QUEUED, and_(J.status == RUNNING, J.lease_until < now)),
        returning=(J.attempt, J.max_attempts),
        status=RUNNING,
        attempt=J.attempt + 1,
        lease_until=now + timedelta(seconds=lease_seconds),
        worker=worker,
        started_at=func.coalesce(J.started_at, literal(now, UTCDateTime())),
        updated_at=now,
    )
    if claimed is None:
        # A cancelling job whose worker stopped renewing the lease is done: it ends cancelled,
        # never picked up again as running.
        cancelled = _update(session, J.id == job_id, J.status == CANCELLING, J.lease_until < now,
                            returning=(J.attempt,), status=CANCELLED, finished_at=now, lease_until=None,
                            updated_at=now)
        if cancelled is not None:
            _status_event(session, job_id=job_id, attempt=cancelled.attempt, status=CANCELLED, now=now,
                          message="cancelled (the worker stopped before it finished cancelling)")
        else:
            fail_exhausted(session, job_id=job_id, now=now)
        return None
    retry = f" (attempt {claimed.attempt - 1}'s lease expired)" if claimed.attempt > 1 else ""
    _status_event(session, job_id=job_id, attempt=claimed.attempt, status=RUNNING, now=now,
                  message=f"attempt {claimed.attempt} of {claimed.max_attempts} started on {worker}{retry}",
                  worker=worker)
    return claimed.attempt


def fail_exhausted(session: Session, *, job_id: str, now: datetime | None = None) -> bool:
    """A running job whose lease expired with no attempt left becomes failed ('max_attempts_exceeded').
    True when this call made that change."""
    now = now or utcnow()
    row = session.execute(select(J.attempt, J.max_attempts).where(J.id == job_id)).one_or_none()
    if row is None:
        return False
    attempt, max_attempts = row
    message = (f"gave up after {attempt} attempt{'s' if attempt != 1 else ''} "
               f"(max_attempts={max_attempts}): each time, the worker stopped renewing its lease "
               "(crashed, killed or hung) before the job finished")
    done = _update(session, J.id == job_id, J.status == RUNNING, J.lease_until < now,
                   J.attempt == attempt, J.attempt >= J.max_attempts,
                   status=FAILED, error_code=EXHAUSTED, error_message=message, finished_at=now,
                   lease_until=None, updated_at=now)
    if done is None:
        return False
    _status_event(session, job_id=job_id, attempt=attempt, status=FAILED, message=message, now=now,
                  error_code=EXHAUSTED)
    return True


def heartbeat(session: Session, *, job_id: str, attempt: int, lease_seconds: float,
              now: datetime | None = None) -> HeartbeatResult:
    """Extend the lease by `lease_seconds` from now, and report whether a cancel was requested."""
    now = now or utcnow()
    row = _fence(session, job_id=job_id, attempt=attempt, now=now, returning=(J.cancel_requested,),
                 lease_until=now + timedelta(seconds=lease_seconds))
    if row is None:
        return HeartbeatResult(alive=False, cancel_requested=False)
    return HeartbeatResult(alive=True, cancel_requested=bool(row.cancel_requested))


def cancel_requested(session: Session, *, job_id: str, attempt: int) -> bool:
    """Whether the tenant asked attempt `attempt` of the job to stop: one primary-key read, no
    write and no lock, cheap enough for the worker to ask twice a second between heartbeats."""
    flag = session.scalar(select(J.cancel_requested).where(J.id == job_id, J.attempt == attempt,
                                                           J.status.in_(ACTIVE_STATUSES)))
    return bool(flag)


# --- fenced writes by the owning worker -------------------------------------------------------------

def set_progress(session: Session, *, job_id: str, attempt: int, progress: dict[str, Any],
                 now: datetime | None = None) -> bool:
    """progress = {phase, epoch, epochs, step, steps, fraction, eta_seconds}."""
    now = now or utcnow()
    return _fence(session, job_id=job_id, attempt=attempt, now=now, progress=progress) is not None


def add_event(session: Session, *, job_id: str, attempt: int, type: str, message: str,
              data: dict[str, Any] | None = None, now: datetime | None = None, level: str = INFO) -> int | None:
    """Append an event (`level` info, warning or error); its seq (1, 2, 3… per job), or None when
    the lease is lost."""
    _check_level(level)
    now = now or utcnow()
    if _fence(session, job_id=job_id, attempt=attempt, now=now) is None:
        return None
    return _append_event(session, job_id=job_id, attempt=attempt, type=type, message=message,
                         data=data, now=now, level=level)


def add_events(session: Session, *, job_id: str, attempt: int, events: list[dict[str, Any]]) -> list[int] | None:
    """`add_event` for several events at once, in their order: each a dict of add_event's keyword
    arguments (type, message; data, level, now optional). Their seqs, or None when the lease is lost.
    Two statements whatever their number (the job's last seq, read under the fence's row lock, then
    one INSERT of every row) instead of one INSERT each."""
    if not events:
        return []
    now = utcnow()
    for e in events:
        _check_level(e.get("level", INFO))
    if _fence(session, job_id=job_id, attempt=attempt, now=events[0].get("now") or now) is None:
        return None
    last = session.scalar(select(func.coalesce(func.max(E.seq), 0)).where(E.job_id == job_id))
    seqs = [last + 1 + i for i in range(len(events))]
    session.execute(insert(EVENTS), [  # parameter sets: one compiled statement for any number of events
        {"job_id": job_id, "seq": seq, "attempt": attempt, "type": e["type"], "level": e.get("level", INFO),
         "message": e["message"], "data": e.get("data"), "created_at": e.get("now") or now}
        for seq, e in zip(seqs, events)])
    return seqs


def add_event_once(session: Session, *, job_id: str, attempt: int, type: str, message: str,
                   data: dict[str, Any], key: tuple[str, ...], now: datetime | None = None,
                   level: str = INFO) -> int | None:
    """Append an event unless the job already has one of this `type` whose data agree with `data`
    on every field named in `key` (str, int or bool values), whichever attempt wrote it.

    For events that report one step of the work, such as ("run", "epoch"): a resumed attempt
    trains again the epochs after its checkpoint, and an earlier attempt may already have reported
    one of them (it died after the report, before its checkpoint was on disk; or the newest
    checkpoint was damaged). Returns the new event's seq, 0 when such an event was already there
    (nothing written), None when the lease is lost. The check runs under the job row's lock taken
    by the fence, so two writers of one job cannot both find the event missing."""
    _check_level(level)
    now = now or utcnow()
    if _fence(session, job_id=job_id, attempt=attempt, now=now) is None:
        return None
    same = [E.job_id == job_id, E.type == type]
    for name in key:
        value, element = data[name], E.data[name]
        if isinstance(value, bool):
            same.append(element.as_boolean() == value)
        elif isinstance(value, int):
            same.append(element.as_integer() == value)
        elif isinstance(value, str):
            same.append(element.as_string() == value)
        else:
            raise TypeError(f"key field {name!r} must be a str, int or bool, not {value.__class__.__name__}")
    if session.scalar(select(E.seq).where(*same).limit(1)) is not None:
        return 0
    return _append_event(session, job_id=job_id, attempt=attempt, type=type, message=message,
                         data=data, now=now, level=level)


def add_metric(session: Session, *, job_id: str, attempt: int, run: str, epoch: int,
               values: dict[str, Any], now: datetime | None = None) -> bool:
    """Record one epoch's metrics. Idempotent for a resumed run: a row already there for
    (job, run, epoch) is REPLACED (the newest attempt's values win; a resumed run recomputes the
    same epoch bit-exactly on CPU), never duplicated."""
    if run not in METRIC_RUNS:
        raise ValueError(f"run must be one of {', '.join(METRIC_RUNS)}")
    now = now or utcnow()
    if _fence(session, job_id=job_id, attempt=attempt, now=now) is None:
        return False
    session.execute(delete(METRICS).where(M.job_id == job_id, M.run == run, M.epoch == epoch))
    session.execute(insert(METRICS).values(job_id=job_id, run=run, epoch=epoch, values=values, created_at=now))
    return True


def add_artifact(session: Session, *, job_id: str, attempt: int, kind: str, storage_key: str,
                 bytes: int, sha256: str, now: datetime | None = None) -> bool:
    """Record a file the job produced; it replaces the job's artifact of the same kind. Use one
    storage key per (job, kind) so the replaced object is overwritten, not orphaned."""
    now = now or utcnow()
    if _fence(session, job_id=job_id, attempt=attempt, now=now) is None:
        return False
    session.execute(delete(ARTIFACTS).where(A.job_id == job_id, A.kind == kind))
    session.add(Artifact(job_id=job_id, kind=kind, storage_key=storage_key, bytes=bytes, sha256=sha256,
                         created_at=now))
    session.flush()
    return True


def add_artifacts(session: Session, *, job_id: str, attempt: int, artifacts: list[dict[str, Any]],
                  now: datetime | None = None) -> bool:
    """`add_artifact` for several files at once (each a dict of kind, storage_key, bytes, sha256; one
    per kind): one DELETE of the kinds' older rows and one INSERT of all, instead of two statements
    and an ORM flush each."""
    if not artifacts:
        return True
    now = now or utcnow()
    kinds = [a["kind"] for a in artifacts]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"one artifact per kind, got {kinds}")
    if _fence(session, job_id=job_id, attempt=attempt, now=now) is None:
        return False
    session.execute(delete(ARTIFACTS).where(A.job_id == job_id, A.kind.in_(kinds)))
    # a list of parameter sets, not .values([...]): one compiled statement, whatever the number of rows
    session.execute(insert(ARTIFACTS), [
        {"id": new_id("art"), "job_id": job_id, "kind": a["kind"], "storage_key": a["storage_key"],
         "bytes": a["bytes"], "sha256": a["sha256"], "created_at": now} for a in artifacts])
    return True


def succeed(session: Session, *, job_id: str, attempt: int, result: dict[str, Any],
            now: datetime | None = None) -> bool:
    """running (or cancelling, when the run finished before it saw the request) -> succeeded."""
    now = now or utcnow()
    if _fence(session, job_id=job_id, attempt=attempt, now=now, status=SUCCEEDED, result=result,
              finished_at=now, lease_until=None) is None:
        return False
    _status_event(session, job_id=job_id, attempt=attempt, status=SUCCEEDED, message="succeeded", now=now)
    return True


def fail(session: Session, *, job_id: str, attempt: int, code: str, message: str,
         now: datetime | None = None) -> bool:
    """running or cancelling -> failed, with a machine-readable code and a message for the user."""
    now = now or utcnow()
    if _fence(session, job_id=job_id, attempt=attempt, now=now, status=FAILED, error_code=code,
              error_message=message, finished_at=now, lease_until=None) is None:
        return False
    _status_event(session, job_id=job_id, attempt=attempt, status=FAILED, message=message, now=now,
                  error_code=code)
    return True


def finish_cancelled(session: Session, *, job_id: str, attempt: int, now: datetime | None = None) -> bool:
    """cancelling -> cancelled, once the worker has stopped its run."""
    now = now or utcnow()
    if _update(session, J.id == job_id, J.attempt == attempt, J.status == CANCELLING,
               status=CANCELLED, finished_at=now, lease_until=None, updated_at=now) is None:
        return False
    _status_event(session, job_id=job_id, attempt=attempt, status=CANCELLED, message="cancelled", now=now)
    return True


# --- the tenant's cancel, and the reaper -------------------------------------------------------------

def request_cancel(session: Session, *, tenant_id: str, job_id: str, now: datetime | None = None) -> str:
    """Ask for the job to stop; returns its new status. queued -> cancelled at once; running ->
    cancelling (the worker reads the flag within half a second: `cancel_requested`); cancelling
    stays. A finished job is a Conflict; an unknown job, or another tenant's, is NotFound."""
    now = now or utcnow()
    if not could_be_id(job_id):
        raise NotFound(f"no job {job_id!r}")
    # Each lost race means the status moved forward, so this loop runs at most once per status.
    for _ in JOB_STATUSES:
        row = session.execute(select(J.status, J.attempt)
                              .where(J.id == job_id, J.tenant_id == tenant_id)).one_or_none()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        status, attempt = row
        if status in TERMINAL_STATUSES:
            raise Conflict(f"job {job_id!r} is already {status}; only a queued or running job can be cancelled")
        if status == CANCELLING:
            return CANCELLING
        if status == QUEUED:
            changed = _update(session, J.id == job_id, J.status == QUEUED, status=CANCELLED,
                              cancel_requested=True, finished_at=now, updated_at=now)
            new_status, message = CANCELLED, "cancelled before it started"
        else:
            changed = _update(session, J.id == job_id, J.status == RUNNING, status=CANCELLING,
                              cancel_requested=True, updated_at=now)
            new_status, message = CANCELLING, "cancel requested; waiting for the worker to stop"
        if changed is not None:
            _status_event(session, job_id=job_id, attempt=attempt, status=new_status, message=message, now=now)
            return new_status
    raise AssertionError(f"job {job_id!r}: status kept changing under request_cancel")


def find_jobs_to_enqueue(session: Session, *, now: datetime, queued_after_seconds: float,
                         limit: int = 500) -> list[str]:
    """Ids the reaper should enqueue again: queued jobs last enqueued (or, never enqueued, created)
    more than `queued_after_seconds` ago, and running/cancelling jobs whose lease expired (their
    claim re-runs, cancels or fails them). Oldest first."""
    stale = now - timedelta(seconds=queued_after_seconds)
    stmt = (select(J.id).where(or_(
        and_(J.status == QUEUED, func.coalesce(J.enqueued_at, J.created_at) < literal(stale, UTCDateTime())),
        and_(J.status.in_(ACTIVE_STATUSES), J.lease_until < now),
    )).order_by(J.created_at, J.id).limit(limit))
    return list(session.scalars(stmt))


def mark_enqueued(session: Session, *, job_id: str, now: datetime | None = None) -> None:
    """Record that the reaper just sent the id to the broker again. The API's first send is not recorded:
    until a job is marked, `find_jobs_to_enqueue` counts from its created_at, just before that send."""
    now = now or utcnow()
    _update(session, J.id == job_id, enqueued_at=now, updated_at=now)
