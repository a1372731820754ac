"""Files and jobs repositories on both databases: tenant filter, pagination, FileInUse."""

from __future__ import annotations

import pytest

from jobs import files_repo, jobs_repo, lifecycle
from jobs.errors import Conflict, FileInUse, NotFound
from jobs.pagination import MAX_PAGE_SIZE


def page_through(list_page, limit: int) -> list[str]:
    ids, after, has_more = [], None, True
    while has_more:
        rows, has_more = list_page(limit=limit, after=after)
        assert len(rows) <= limit
        ids += [row.id for row in rows]
        after = rows[-1].id if rows else None
    return ids


@pytest.mark.parametrize("limit", [1, 3, 7, 50])
def test_job_pagination_covers_every_row_once_newest_first(session, make_job, tenant, make_tenant, limit):
    created = [make_job().id for _ in range(7)]
    make_job(tenant_id=make_tenant("other").id)  # never listed for acme
    ids = page_through(lambda **kw: jobs_repo.list_jobs(session, tenant_id=tenant.id, **kw), limit)
    assert ids == list(reversed(created))


def test_file_pagination_covers_every_row_once(session, make_file, tenant):
    created = [make_file().id for _ in range(5)]
    ids = page_through(lambda **kw: files_repo.list_files(session, tenant_id=tenant.id, **kw), 2)
    assert ids == list(reversed(created))
    rows, has_more = files_repo.list_files(session, tenant_id=tenant.id, purpose="dataset")
    assert (rows, has_more) == ([], False)


def test_list_jobs_filters_by_status(session, make_job, tenant):
    queued, cancelled = make_job(), make_job()
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=cancelled.id)
    session.commit()
    rows, has_more = jobs_repo.list_jobs(session, tenant_id=tenant.id, status="cancelled")
    assert [r.id for r in rows] == [cancelled.id] and not has_more
    rows, _ = jobs_repo.list_jobs(session, tenant_id=tenant.id, status="queued")
    assert [r.id for r in rows] == [queued.id]
    with pytest.raises(ValueError):
        jobs_repo.list_jobs(session, tenant_id=tenant.id, status="paused")


def test_bad_cursor_and_limit(session, make_job, make_tenant, tenant):
    other_job = make_job(tenant_id=make_tenant("other").id)
    with pytest.raises(NotFound):  # another tenant's id is no cursor
        jobs_repo.list_jobs(session, tenant_id=tenant.id, after=other_job.id)
    for limit in (0, MAX_PAGE_SIZE + 1):
        with pytest.raises(ValueError):
            jobs_repo.list_jobs(session, tenant_id=tenant.id, limit=limit)


def test_other_tenants_rows_are_not_found(session, make_job, make_file, make_tenant):
    job, file = make_job(), make_file()
    other = make_tenant("other")
    for read in (jobs_repo.get, jobs_repo.events, jobs_repo.metrics, jobs_repo.artifacts):
        with pytest.raises(NotFound):
            read(session, tenant_id=other.id, job_id=job.id)
    with pytest.raises(NotFound):
        files_repo.get(session, tenant_id=other.id, file_id=file.id)
    with pytest.raises(NotFound):
        files_repo.delete(session, tenant_id=other.id, file_id=file.id)
    assert jobs_repo.list_jobs(session, tenant_id=other.id) == ([], False)
    assert files_repo.list_files(session, tenant_id=other.id) == ([], False)


def test_job_is_created_queued(session, tenant):
    job = jobs_repo.create(session, tenant_id=tenant.id, spec={"baseline": True}, max_attempts=2)
    session.commit()
    row = jobs_repo.get(session, tenant_id=tenant.id, job_id=job.id)
    assert row.id.startswith("job_") and row.status == "queued"
    assert (row.attempt, row.max_attempts, row.cancel_requested, row.spec) == (0, 2, False, {"baseline": True})
    assert row.created_at.tzinfo is not None and row.enqueued_at is None


def test_file_round_trip(session, make_file, tenant):
    file = make_file()
    row = files_repo.get(session, tenant_id=tenant.id, file_id=file.id)
    assert row.id.startswith("file_") and row.info == {"classes": 10} and row.storage_key.endswith(".safetensors")


def test_file_used_by_an_unfinished_job_cannot_be_deleted(session, make_file, make_job, tenant):
    file, unused = make_file(), make_file()
    job = make_job(spec={"teacher": {"file_id": file.id}, "dataset": {"builtin": "digits"}})
    with pytest.raises(FileInUse, match=job.id) as raised:
        files_repo.delete(session, tenant_id=tenant.id, file_id=file.id)
    assert isinstance(raised.value, Conflict)
    session.rollback()
    assert files_repo.delete(session, tenant_id=tenant.id, file_id=unused.id).id == unused.id
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id)  # finished: the file is free
    files_repo.delete(session, tenant_id=tenant.id, file_id=file.id)
    session.commit()
    with pytest.raises(NotFound):
        files_repo.get(session, tenant_id=tenant.id, file_id=file.id)
