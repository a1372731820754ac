"""Webhooks and their deliveries: all the SQL of the feature.

The tenant's side (create, list, get, delete, deliveries, ping) filters every query by tenant. The
outbox side is called by the state machine and the worker's sender with ids only:

- `enqueue_job_event` runs inside the transaction that gives a job its terminal status
  (jobs/lifecycle.py), so the event's delivery rows commit with the status or not at all;
- `claim_due` takes due deliveries in one short transaction (FOR UPDATE SKIP LOCKED on PostgreSQL,
  so senders in several workers never take the same row; SQLite's one writer does the same) and
  pushes their `next_attempt_at` past the attempt's timeout, so a sender that dies mid-attempt
  leaves the row to be taken again;
- `record_attempt` writes the attempt's outcome in another, fenced by the attempt number: a sender
  whose row was taken over (or whose webhook was deleted) writes nothing.

These functions never commit: the caller commits at its boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from jobs.errors import Conflict, NotFound, TooManyPending
from jobs.pagination import newest_first_page
from jobs.tables import (
    DELIVERY_STATUSES,
    FAILED,
    JOB_EVENT_TYPES,
    PENDING,
    PING,
    SUCCEEDED,
    Job,
    Webhook,
    WebhookDelivery,
    new_id,
)
from jobs.tenant_rows import owned
from jobs.webhooks import new_secret, retry_delay

# Claims add this to the attempt's own timeout: time to resolve the name and record the outcome.
CLAIM_MARGIN_SECONDS = 30


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _body(event_id: str, event_type: str, now: datetime, data: dict[str, Any]) -> str:
    """The event as posted: compact JSON, the same bytes on every attempt."""
    return json.dumps({"id": event_id, "object": "event", "type": event_type, "created_at": _iso(now),
                       "data": data}, separators=(",", ":"))


# --- the tenant's webhooks ---------------------------------------------------------------------------

def count(session: Session, *, tenant_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id))


def create(session: Session, *, tenant_id: str, url: str, events: list[str], now: datetime) -> Webhook:
    """A new webhook with a new signing secret. The caller locks the tenant and checks the limit first."""
    unknown = set(events) - set(JOB_EVENT_TYPES)
    if unknown or not events:
        raise ValueError(f"events must be some of {', '.join(JOB_EVENT_TYPES)}")
    row = Webhook(id=new_id("wh"), tenant_id=tenant_id, url=url, secret=new_secret(),
                  events=list(dict.fromkeys(events)), created_at=now)
    session.add(row)
    session.flush()
    return row


def list_webhooks(session: Session, *, tenant_id: str) -> list[Webhook]:
    """Every webhook of the tenant (at most KD_WEBHOOKS_PER_TENANT), newest first."""
    return list(session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id)
                                .order_by(Webhook.created_at.desc(), Webhook.id.desc())))


def get(session: Session, *, tenant_id: str, webhook_id: str) -> Webhook:
    return owned(session, Webhook, tenant_id=tenant_id, row_id=webhook_id, noun="webhook", fresh=True)


def rotate_secret(session: Session, *, tenant_id: str, webhook_id: str, now: datetime,
                  previous_valid_seconds: float) -> Webhook:
    """A new signing secret; the current one keeps signing too (a second `v1=`) for
    `previous_valid_seconds` (0: it stops at once). A secret rotated out earlier is forgotten."""
    row = get(session, tenant_id=tenant_id, webhook_id=webhook_id)
    keep = previous_valid_seconds > 0
    row.previous_secret = row.secret if keep else None
    row.previous_secret_expires_at = now + timedelta(seconds=previous_valid_seconds) if keep else None
    row.secret = new_secret()
    session.flush()
    return row


def delete_webhook(session: Session, *, tenant_id: str, webhook_id: str) -> None:
    """Delete the webhook and its deliveries (a pending one is never sent; one in flight records nothing)."""
    get(session, tenant_id=tenant_id, webhook_id=webhook_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id,
                                                  WebhookDelivery.tenant_id == tenant_id))
    session.execute(delete(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant_id))


def list_deliveries(session: Session, *, tenant_id: str, webhook_id: str, limit: int, after: str | None,
                    status: str | None = None) -> tuple[list[WebhookDelivery], bool]:
    """The webhook's deliveries, newest first (cursor pagination, jobs/pagination.py)."""
    get(session, tenant_id=tenant_id, webhook_id=webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id,
                                         WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"status must be one of {', '.join(DELIVERY_STATUSES)}")
        stmt = stmt.where(WebhookDelivery.status == status)
    return newest_first_page(session, stmt, WebhookDelivery, tenant_id=tenant_id, after=after, limit=limit)


def _check_pending(session: Session, *, tenant_id: str, webhook_id: str, limit: int) -> None:
    """Lock the webhook; TooManyPending when `limit` of its deliveries already wait to be sent (a ping
    or redelivery may not make the service send a receiver more than that at once)."""
    owned(session, Webhook, tenant_id=tenant_id, row_id=webhook_id, noun="webhook", fresh=True, lock=True)
    pending = session.scalar(select(func.count()).select_from(WebhookDelivery).where(
        WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == PENDING))
    if pending >= limit:
        raise TooManyPending(pending, limit)


def enqueue_ping(session: Session, *, tenant_id: str, webhook_id: str, now: datetime,
                 pending_limit: int) -> WebhookDelivery:
    """A `ping` event for this webhook alone, due at once (TooManyPending past `pending_limit`)."""
    _check_pending(session, tenant_id=tenant_id, webhook_id=webhook_id, limit=pending_limit)
    event_id = new_id("evt")
    row = WebhookDelivery(id=new_id("whd"), webhook_id=webhook_id, tenant_id=tenant_id, event_id=event_id,
                          event_type=PING, job_id=None, status=PENDING, attempt_count=0, attempts=[],
                          body=_body(event_id, PING, now, {"webhook_id": webhook_id}),
                          next_attempt_at=now, created_at=now)
    session.add(row)
    session.flush()
    return row


def redeliver(session: Session, *, tenant_id: str, webhook_id: str, delivery_id: str, now: datetime,
              pending_limit: int) -> WebhookDelivery:
    """A new delivery of a finished delivery's event (same event id and body), due at once, with a
    fresh KD_WEBHOOK_MAX_ATTEMPTS. A delivery still pending is a Conflict; TooManyPending past
    `pending_limit`."""
    _check_pending(session, tenant_id=tenant_id, webhook_id=webhook_id, limit=pending_limit)
    old = owned(session, WebhookDelivery, tenant_id=tenant_id, row_id=delivery_id, noun="delivery", fresh=True)
    if old.webhook_id != webhook_id:  # another webhook's delivery reads as unknown here
        raise NotFound(f"no delivery {delivery_id!r}")
    if old.status == PENDING:
        raise Conflict(f"delivery {delivery_id!r} is still pending; it is retried on its own")
    row = WebhookDelivery(id=new_id("whd"), webhook_id=webhook_id, tenant_id=tenant_id, event_id=old.event_id,
                          event_type=old.event_type, job_id=old.job_id, body=old.body, status=PENDING,
                          attempt_count=0, attempts=[], next_attempt_at=now, created_at=now)
    session.add(row)
    session.flush()
    return row


# --- the outbox ----------------------------------------------------------------------------------------

def enqueue_job_event(session: Session, *, job_id: str, status: str, now: datetime) -> int:
    """Queue `job.<status>` for each of the job's tenant's webhooks that subscribe to it; the number
    queued. Called by jobs/lifecycle.py in the transaction that wrote the status (after its UPDATE, so
    the job row is locked and read as it now is); one indexed SELECT when the tenant has no webhook."""
    event_type = f"job.{status}"
    # on the tables (Core), as jobs/lifecycle.py's statements: this runs with every job's end
    w, j = Webhook.__table__.c, Job.__table__.c
    hooks = session.execute(select(w.id, w.tenant_id, w.events)
                            .join_from(Webhook.__table__, Job.__table__, j.tenant_id == w.tenant_id)
                            .where(j.id == job_id)).all()
    hooks = [hook for hook in hooks if event_type in hook.events]
    if not hooks:
        return 0
    job = session.execute(select(Job.id, Job.status, Job.attempt, Job.error_code, Job.error_message,
                                 Job.created_at, Job.started_at, Job.finished_at).where(Job.id == job_id)).one()
    event_id = new_id("evt")
    body = _body(event_id, event_type, now, {"job": {
        "id": job.id, "status": job.status, "attempt": job.attempt, "error_code": job.error_code,
        "error_message": job.error_message, "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at)}})
    session.execute(insert(WebhookDelivery), [
        {"id": new_id("whd"), "webhook_id": hook.id, "tenant_id": hook.tenant_id, "event_id": event_id,
         "event_type": event_type, "job_id": job_id, "body": body, "status": PENDING, "attempt_count": 0,
         "attempts": [], "next_attempt_at": now, "created_at": now}
        for hook in hooks])
    return len(hooks)


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt, with what the sender needs to make it."""
    delivery_id: str
    webhook_id: str
    event_id: str
    event_type: str
    body: str
    attempt: int  # this attempt's number, 1 for the first
    url: str
    secrets: tuple[str, ...]  # the current signing secret, then the previous one while it is still valid
    tenant_id: str  # whose delivery (the sender caps the attempts one tenant has under way)


def claim_due(session: Session, *, now: datetime, limit: int, attempt_seconds: float,
              max_attempts: int, per_tenant: int | None = None,
              in_flight: dict[str, int] | None = None) -> list[Claimed]:
    """Take up to `limit` due deliveries for one attempt each (oldest due first). A due delivery whose
    attempts are already spent (its sender died during the last one) is failed instead.
    `per_tenant` caps one tenant's attempts under way, counting those the caller has `in_flight`
    (tenant id -> attempts), so one tenant's slow receivers cannot take every sender thread."""
    # Nothing is written when nothing is due (an idle sender asks every KD_WEBHOOK_POLL_SECONDS; on SQLite
    # a write would take the database's lock each time).
    left = {} if per_tenant is None else {t: per_tenant - n for t, n in (in_flight or {}).items()}
    stmt = (select(WebhookDelivery.id, WebhookDelivery.attempt_count, WebhookDelivery.tenant_id)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now))
    full = [tenant for tenant, n in left.items() if n <= 0]
    if full:
        stmt = stmt.where(WebhookDelivery.tenant_id.not_in(full))
    # with a cap, a few more rows than `limit`, so one tenant past its share does not leave the claim short
    stmt = stmt.order_by(WebhookDelivery.next_attempt_at).limit(limit if per_tenant is None else limit * 4)
    due = []
    for row in session.execute(stmt.with_for_update(skip_locked=True)).all():
        if len(due) == limit:
            break
        if per_tenant is not None:
            if left.get(row.tenant_id, per_tenant) <= 0:
                continue
            left[row.tenant_id] = left.get(row.tenant_id, per_tenant) - 1
        due.append(row)
    spent = [row.id for row in due if row.attempt_count >= max_attempts]
    if spent:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(spent), WebhookDelivery.status == PENDING)
            .values(status=FAILED, next_attempt_at=None, finished_at=now,
                    last_error=f"gave up after {max_attempts} attempts; the sender stopped during the last one")
            .execution_options(synchronize_session=False))
    ids = [row.id for row in due if row.attempt_count < max_attempts]
    if not ids:
        return []
    # Pushed past the attempt: no other sender takes the row while this one is at it.
    taken = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
        .values(attempt_count=WebhookDelivery.attempt_count + 1,
                next_attempt_at=now + timedelta(seconds=attempt_seconds + CLAIM_MARGIN_SECONDS))
        .returning(WebhookDelivery.id, WebhookDelivery.webhook_id, WebhookDelivery.event_id,
                   WebhookDelivery.event_type, WebhookDelivery.body, WebhookDelivery.attempt_count,
                   WebhookDelivery.tenant_id)
        .execution_options(synchronize_session=False)).all()
    if not taken:
        return []
    hooks = {row.id: row for row in session.execute(
        select(Webhook.id, Webhook.url, Webhook.secret, Webhook.previous_secret, Webhook.previous_secret_expires_at)
        .where(Webhook.id.in_({t.webhook_id for t in taken})))}

    def secrets_of(hook) -> tuple[str, ...]:
        previous_valid = hook.previous_secret is not None and hook.previous_secret_expires_at is not None \
            and hook.previous_secret_expires_at > now
        return (hook.secret, hook.previous_secret) if previous_valid else (hook.secret,)

    return [Claimed(delivery_id=t.id, webhook_id=t.webhook_id, event_id=t.event_id, event_type=t.event_type,
                    body=t.body, attempt=t.attempt_count, url=hooks[t.webhook_id].url,
                    secrets=secrets_of(hooks[t.webhook_id]), tenant_id=t.tenant_id)
            for t in sorted(taken, key=lambda t: ids.index(t.id))]


def purge_finished(session: Session, *, before: datetime, batch: int = 1000) -> int:
    """Delete up to `batch` deliveries that finished (succeeded or failed) before `before`, oldest
    first; the number deleted. Pending ones are never deleted here."""
    old = (select(WebhookDelivery.id).where(WebhookDelivery.status != PENDING, WebhookDelivery.finished_at < before)
           .order_by(WebhookDelivery.finished_at).limit(batch))
    ids = list(session.scalars(old))
    if ids:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids), WebhookDelivery.status != PENDING)
                        .execution_options(synchronize_session=False))
    return len(ids)


def record_attempt(session: Session, *, delivery_id: str, attempt: int, outcome: dict[str, Any], ok: bool,
                   now: datetime, max_attempts: int, retry_base: float, retry_max: float) -> str | None:
    """Record attempt `attempt`'s `outcome` ({started_at, duration_ms, address, status_code, error}):
    `ok` (a 2xx) finishes the delivery as succeeded; otherwise it is due again after the backoff, or
    failed when this was attempt `max_attempts`. Returns the delivery's status, or None when the row
    is no longer this attempt's (taken over after the claim expired, or its webhook deleted)."""
    row = session.execute(
        select(WebhookDelivery.attempts)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempt_count == attempt,
               WebhookDelivery.status == PENDING)
        .with_for_update()).one_or_none()
    if row is None:
        return None
    attempts = list(row.attempts)
    # attempts whose sender stopped before it recorded them (the claim counted them)
    attempts += [{"number": n, "error": "no outcome recorded: the sender stopped during this attempt"}
                 for n in range(len(attempts) + 1, attempt)]
    attempts.append({"number": attempt, **outcome})
    values: dict[str, Any] = {"attempts": attempts, "last_status_code": outcome.get("status_code"),
                              "last_error": outcome.get("error")}
    if ok:
        values.update(status=SUCCEEDED, next_attempt_at=None, finished_at=now)
    elif attempt >= max_attempts:
        values.update(status=FAILED, next_attempt_at=None, finished_at=now)
    else:
        values.update(next_attempt_at=now + timedelta(seconds=retry_delay(attempt, base=retry_base, cap=retry_max)))
    session.execute(update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempt_count == attempt,
                           WebhookDelivery.status == PENDING)
                    .values(**values).execution_options(synchronize_session=False))
    return values.get("status", PENDING)
