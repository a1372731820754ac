"""What a tenant uses, for the quotas the API enforces: unfinished jobs and stored upload bytes.

The API calls `lock_tenant` first in the transaction that creates the job or file row, so two
concurrent requests of one tenant check and insert one after the other and cannot both take the
last slot. These functions never commit.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.tables import CANCELLING, QUEUED, RUNNING, File, Job, Tenant

UNFINISHED_STATUSES = (QUEUED, RUNNING, CANCELLING)


def lock_tenant(session: Session, *, tenant_id: str) -> None:
    """Hold the tenant's row until commit: SELECT ... FOR UPDATE on PostgreSQL; on SQLite, which
    ignores FOR UPDATE, a no-op UPDATE takes the database's write lock instead."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))
    else:
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def unfinished_jobs(session: Session, *, tenant_id: str) -> int:
    """Jobs of the tenant that are queued, running or cancelling."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(UNFINISHED_STATUSES)))


def unfinished_jobs_and_files(session: Session, *, tenant_id: str, file_ids: list[str]) -> tuple[int, set[str]]:
    """`unfinished_jobs` and those of `file_ids` that are files of the tenant now, in one statement
    when any is (one round trip of the few a submission makes under the tenant's lock)."""
    used = select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(UNFINISHED_STATUSES)).scalar_subquery()
    rows = session.execute(select(File.id, used).where(File.tenant_id == tenant_id, File.id.in_(file_ids))).all() \
        if file_ids else []
    if not rows:
        return unfinished_jobs(session, tenant_id=tenant_id), set()
    return rows[0][1], {row[0] for row in rows}


def stored_bytes(session: Session, *, tenant_id: str) -> int:
    """Total size of the tenant's uploaded files (job outputs are not counted)."""
    return session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id))
