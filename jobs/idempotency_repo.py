"""Idempotency keys (the `Idempotency-Key` header of the POSTs that create jobs and files).

A request claims its key before doing any work: `claim` inserts an `in_flight` row, which the caller
commits at once so that a concurrent request with the same key finds it. The work's transaction
then calls `finish` (the response to replay) next to the job or file row it writes; a request
that fails calls `release`, so the client may retry with the same key. Rows past `expires_at` are
ignored: `claim` replaces an expired row with its key, and `purge_expired` deletes a batch of them.

The claim is one `INSERT ... ON CONFLICT DO NOTHING` against the unique (tenant_id, key): of two
concurrent requests exactly one inserts (on PostgreSQL the second waits for the first's commit);
the other gets None and reads the winner with `find`. `finish` and `release` are fenced by the
claim's row id and `status = 'in_flight'`, so a request whose abandoned claim expired and was taken
over by another can neither finish nor delete the newer claim. These functions never commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.tables import DONE, IN_FLIGHT, IdempotencyKey

PURGE_BATCH = 500


def claim(session: Session, *, tenant_id: str, key: str, fingerprint: str | None, now: datetime,
          hold_seconds: float) -> int | None:
    """Claim `key` for a request arriving now: replace an expired row, insert an `in_flight` row
    that expires after `hold_seconds` unless finished. Its id, or None if a live row holds the key."""
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key, IdempotencyKey.expires_at <= now))
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    return session.scalar(
        insert(IdempotencyKey)
        .values(tenant_id=tenant_id, key=key, fingerprint=fingerprint, status=IN_FLIGHT, created_at=now,
                expires_at=now + timedelta(seconds=hold_seconds))
        .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        .returning(IdempotencyKey.id))


def find(session: Session, *, tenant_id: str, key: str, now: datetime) -> IdempotencyKey | None:
    """The live (unexpired) row holding this tenant's key, if any."""
    return session.scalar(
        select(IdempotencyKey)
        .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key, IdempotencyKey.expires_at > now)
        .execution_options(populate_existing=True))


def finish(session: Session, *, claim_id: int, fingerprint: str, response_status: int, response_body: Any,
           now: datetime, ttl_seconds: float) -> bool:
    """Store the response to replay, kept `ttl_seconds` from now. False: the claim is gone (it
    expired and another request took the key over); the caller must roll its work back."""
    result = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == claim_id, IdempotencyKey.status == IN_FLIGHT)
        .values(status=DONE, fingerprint=fingerprint, response_status=response_status,
                response_body=response_body, expires_at=now + timedelta(seconds=ttl_seconds)))
    return result.rowcount == 1


def release(session: Session, *, claim_id: int) -> None:
    """Delete an unfinished claim (its request failed), so the key can be used again."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == claim_id,
                                                 IdempotencyKey.status == IN_FLIGHT))


def purge_expired(session: Session, *, now: datetime, limit: int = PURGE_BATCH) -> int:
    """Delete up to `limit` expired rows of any tenant; rows another transaction has locked are
    skipped (PostgreSQL), so concurrent purges never wait on or deadlock with each other."""
    batch = (select(IdempotencyKey.id).where(IdempotencyKey.expires_at <= now)
             .order_by(IdempotencyKey.id).limit(limit).with_for_update(skip_locked=True))
    return session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(batch))).rowcount
