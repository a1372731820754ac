"""Uploaded files (teachers, datasets, initial student weights). The bytes live in the artifact
store under `storage_key`; this table holds what the upload's inspection found."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import quotas_repo
from jobs.errors import FileInUse
from jobs.pagination import newest_first_page
from jobs.tables import TERMINAL_STATUSES, File, Job, new_id
from jobs.tenant_rows import owned


def new_file_id() -> str:
    """An id to name the storage key before the row exists (upload first, then insert)."""
    return new_id("file")


def create(session: Session, *, tenant_id: str, purpose: str, format: str, filename: str, bytes: int,
           sha256: str, storage_key: str, info: dict[str, Any] | None = None,
           file_id: str | None = None) -> File:
    row = File(id=file_id or new_file_id(), tenant_id=tenant_id, purpose=purpose, format=format,
               filename=filename, bytes=bytes, sha256=sha256, storage_key=storage_key, info=info or {})
    session.add(row)
    session.flush()
    return row


def get(session: Session, *, tenant_id: str, file_id: str) -> File:
    return owned(session, File, tenant_id=tenant_id, row_id=file_id, noun="file")


def list_files(session: Session, *, tenant_id: str, limit: int = 20, after: str | None = None,
               purpose: str | None = None, sha256: str | None = None) -> tuple[list[File], bool]:
    """Newest first; `after` is the last id of the previous page. Returns (rows, has_more)."""
    stmt = select(File).where(File.tenant_id == tenant_id)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    if sha256 is not None:
        stmt = stmt.where(File.sha256 == sha256)
    return newest_first_page(session, stmt, File, tenant_id=tenant_id, after=after, limit=limit)


def delete(session: Session, *, tenant_id: str, file_id: str) -> File:
    """Delete the row and return it; the caller removes `storage_key` from the store after its
    commit. FileInUse while a job that has not finished names the file anywhere in its spec.

    The tenant's row is locked first (quotas_repo.lock_tenant), the lock `POST /v1/jobs` takes
    before it re-checks its files and inserts the job: a submission racing this delete either
    commits its job first, and this then sees it (FileInUse, the file kept), or finds the file
    gone (a 422). Without the lock both could pass their check and commit (issue 16 item 9)."""
    quotas_repo.lock_tenant(session, tenant_id=tenant_id)
    row = get(session, tenant_id=tenant_id, file_id=file_id)
    users = [job_id for job_id, spec in session.execute(
        select(Job.id, Job.spec).where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES)))
        if _mentions(spec, file_id)]
    if users:
        raise FileInUse(f"file {file_id!r} is used by unfinished job(s) {', '.join(sorted(users))}; "
                        "cancel them or wait for them to finish")
    session.delete(row)
    session.flush()
    return row


def _mentions(value: Any, file_id: str) -> bool:
    """Whether `file_id` appears as a value anywhere in a JSON document (spec field names vary:
    teacher.file_id, dataset.train_file_id, student.init_file_id…)."""
    if isinstance(value, dict):
        return any(_mentions(v, file_id) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, file_id) for v in value)
    return value == file_id
