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


def stored_bytes(session: Session, *, tenant_id: str) -> int:
    """Total size of the tenant's uploaded files (job outputs are not counted)."""
    return session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id))
