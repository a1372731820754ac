"""Per-tenant quotas: unfinished jobs (KD_QUOTA_CONCURRENT_JOBS) and stored upload bytes
(KD_QUOTA_STORED_BYTES). Past one, the request is a 429 problem whose detail names the quota, its
limit and the tenant's usage, with a `Retry-After` header, and nothing is stored.

`Retry-After` is a hint, not a promise: a job slot frees when one of the tenant's jobs finishes or
is cancelled (30 s is a polling interval, not a prediction); stored bytes free only when the tenant
deletes files, so waiting alone never helps and 3600 s says "not soon".

The checks that decide run in the transaction that inserts the job or file row, after the tenant's
row is locked, so concurrent requests of one tenant cannot both take the last slot. Cheaper early
checks (Content-Length, the received size) refuse what is already certain to be over.
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session

from api.problems import Problem
from api.uploads import MULTIPART_OVERHEAD_BYTES
from jobs import quotas_repo
from jobs.settings import Settings

JOBS_RETRY_AFTER_SECONDS = 30
BYTES_RETRY_AFTER_SECONDS = 3600


def take_job_slot(session: Session, *, tenant_id: str, settings: Settings, file_ids: list[str] = ()) -> set[str]:
    """Lock the tenant; 429 if it already has KD_QUOTA_CONCURRENT_JOBS unfinished jobs. The caller
    inserts the job in this same transaction. Returns those of `file_ids` (the files the job names) that
    the tenant still has, read under the lock in the count's statement (api/spec_resolution.py:
    check_files_still_exist)."""
    quotas_repo.lock_tenant(session, tenant_id=tenant_id)
    used, existing = quotas_repo.unfinished_jobs_and_files(session, tenant_id=tenant_id, file_ids=list(file_ids))
    limit = settings.quota_concurrent_jobs
    if used >= limit:
        raise Problem(429, f"concurrent jobs quota exceeded: the limit is {limit} unfinished jobs (queued, "
                           f"running or cancelling) and this tenant has {used}; wait for one to finish or cancel "
                           "one (KD_QUOTA_CONCURRENT_JOBS)", slug="quota-exceeded",
                      headers={"Retry-After": str(JOBS_RETRY_AFTER_SECONDS)})
    return existing


def check_stored_bytes(session: Session, *, tenant_id: str, settings: Settings, adding: int,
                       at_least: bool = False, lock: bool = False) -> None:
    """429 if the tenant's uploads plus `adding` bytes would pass KD_QUOTA_STORED_BYTES. With
    `lock`, lock the tenant first: the caller inserts the file row in this same transaction."""
    if lock:
        quotas_repo.lock_tenant(session, tenant_id=tenant_id)
    used, limit = quotas_repo.stored_bytes(session, tenant_id=tenant_id), settings.quota_stored_bytes
    if used + adding > limit:
        size = f"at least {adding}" if at_least else f"{adding}"
        raise Problem(429, f"stored bytes quota exceeded: the limit is {limit} bytes of files, this tenant "
                           f"stores {used} and this upload adds {size}; delete files to make room "
                           "(KD_QUOTA_STORED_BYTES)", slug="quota-exceeded",
                      headers={"Retry-After": str(BYTES_RETRY_AFTER_SECONDS)})


def refuse_declared_upload(request: Request, session: Session, *, tenant_id: str, settings: Settings) -> None:
    """429 before reading the body when its Content-Length alone shows the file cannot fit: the
    file part is taken to be at least the body less MULTIPART_OVERHEAD_BYTES (64 KiB for boundaries,
    part headers and the purpose field). A body over the upload cap is left to the parser's 413."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return
    file_bytes = int(declared) - MULTIPART_OVERHEAD_BYTES
    if 0 < file_bytes <= settings.max_upload_bytes:
        check_stored_bytes(session, tenant_id=tenant_id, settings=settings, adding=file_bytes, at_least=True)
