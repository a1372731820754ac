"""jobs/reads.py on SQLite and PostgreSQL: the one-statement reads behind GET /v1/jobs/{id} and
GET /v1/jobs answer exactly what the repositories answer (the job, its queue position and the
reason it waits, the page and its cursor), and refuse an unknown or revoked key in that statement,
with no delay."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs import api_keys, jobs_repo, reads, workers_repo
from jobs.tables import RUNNING, Job, utcnow

CPU = {"resources": {"device": "cpu", "gpus": 0, "processes": 1}}
CUDA1 = {"resources": {"device": "cuda", "gpus": 1, "processes": 1}}
CUDA2 = {"resources": {"device": "cuda", "gpus": 2, "processes": 2}}
FIELDS = ("id", "status", "spec", "attempt", "max_attempts", "progress", "result", "error_code", "error_message",
          "created_at", "started_at", "finished_at", "updated_at")


def _spec(res):
    return {"teacher": {"file_id": "file_none"}, **res}


@pytest.fixture
def keyed(session, tenant):
    key, _ = api_keys.create_key(session, tenant_name=tenant.name)
    session.commit()
    return reads.key_hash(key)


def _same_job(row, job: Job) -> None:
    assert {f: getattr(row, f) for f in FIELDS} == {f: getattr(job, f) for f in FIELDS}
    assert row.created_at.utcoffset() == timedelta(0)  # in UTC, as UTCDateTime returns it


def test_a_job_and_where_it_waits_in_one_statement(engine, session, make_job, keyed, make_tenant):
    now = utcnow()
    cpu = [make_job(spec=_spec(CPU)) for _ in range(3)]
    gpu2 = make_job(spec=_spec(CUDA2))
    old = make_job(spec={"teacher": {"file_id": "file_none"}})  # stored before resources existed: kd.cpu
    other = make_job(tenant_id=make_tenant("other").id, spec=_spec(CPU))  # counts in the queue, not readable
    session.execute(update(Job).where(Job.id == cpu[0].id).values(status=RUNNING, progress={"fraction": 0.5},
                                                                    started_at=now))
    workers_repo.register(session, name="w@a", hostname="a", pid=1, queues=["kd.cpu", "kd.cuda.1"], device="cuda",
                          gpus=1, now=now)
    session.commit()
    for job in (*cpu, gpu2, old):
        found = reads.job_for_key(engine, key_hash=keyed, job_id=job.id, stale_seconds=30, now=now)
        row = session.get(Job, job.id, populate_existing=True)
        assert found.tenant_id == job.tenant_id
        _same_job(found.job, row)
        if row.status == "queued":
            expected = workers_repo.queue_status(session, job=row, stale_seconds=30, now=now)
            assert found.queue_position == expected.position
            assert workers_repo.waiting_reason(row.spec, found.live_queues) == expected.waiting_reason
        else:
            assert found.queue_position is None and found.live_queues is None
    assert reads.job_for_key(engine, key_hash=keyed, job_id=cpu[2].id, stale_seconds=30, now=now).queue_position == 1
    gpu = reads.job_for_key(engine, key_hash=keyed, job_id=gpu2.id, stale_seconds=30, now=now)
    assert gpu.queue_position == 0 and "kd.cuda.2" in workers_repo.waiting_reason(gpu.job.spec, gpu.live_queues)
    # the worker stopped beating: nobody serves kd.cpu any more
    later = reads.job_for_key(engine, key_hash=keyed, job_id=cpu[1].id, stale_seconds=30,
                              now=now + timedelta(seconds=31))
    assert later.live_queues == frozenset() and workers_repo.waiting_reason(later.job.spec, later.live_queues)
    # another tenant's job answers like no job; an id we never issue is never sent
    for job_id in (other.id, "job_nope", "job\x00x", "x" * 10_000):
        found = reads.job_for_key(engine, key_hash=keyed, job_id=job_id, stale_seconds=30)
        assert found.tenant_id == cpu[0].tenant_id and found.job is None


def test_a_page_carries_the_live_workers_queues(engine, session, make_job, keyed):
    """GET /v1/jobs's statement reads the queues live workers serve once, for each queued job's
    waiting_reason (the dashboard no longer asks job by job)."""
    now = utcnow()
    make_job(spec=_spec(CPU))
    workers_repo.register(session, name="w@a", hostname="a", pid=1, queues=["kd.cpu", "kd.cuda.1"], device="cuda",
                          gpus=1, now=now)
    session.commit()
    page = reads.jobs_for_key(engine, key_hash=keyed, limit=20, stale_seconds=30, now=now)
    assert page.live_queues == workers_repo.live_queues(session, stale_seconds=30, now=now) == {"kd.cpu", "kd.cuda.1"}
    later = reads.jobs_for_key(engine, key_hash=keyed, limit=20, stale_seconds=30, now=now + timedelta(seconds=31))
    assert later.live_queues == frozenset() and len(later.jobs) == 1


def test_an_unknown_or_revoked_key_reads_nothing_at_once(engine, session, tenant, make_job):
    job = make_job(spec=_spec(CPU))
    key, row = api_keys.create_key(session, tenant_name=tenant.name)
    session.commit()
    assert reads.job_for_key(engine, key_hash=reads.key_hash(key), job_id=job.id, stale_seconds=30).job is not None
    assert reads.jobs_for_key(engine, key_hash=reads.key_hash(key), limit=5, stale_seconds=30).jobs
    api_keys.revoke_key(session, prefix_or_id=row.id)
    session.commit()
    for key_hash in (reads.key_hash(key), reads.key_hash("kd_" + "A" * 43), reads.key_hash("sk-other")):
        assert reads.job_for_key(engine, key_hash=key_hash, job_id=job.id, stale_seconds=30) == reads.KeyedJob(None,
                                                                                                               None)
        page = reads.jobs_for_key(engine, key_hash=key_hash, limit=5, stale_seconds=30)
        assert page.tenant_id is None and page.jobs == []


def test_pages_match_the_repository(engine, session, make_job, keyed, make_tenant):
    jobs = [make_job(spec=_spec(CPU if i % 3 else CUDA1)) for i in range(7)]
    make_job(tenant_id=make_tenant("other").id)
    session.execute(update(Job).where(Job.id.in_([jobs[1].id, jobs[4].id])).values(status=RUNNING))
    session.commit()
    tenant_id = jobs[0].tenant_id
    for status in (None, "queued", "running", "failed"):
        for limit in (1, 2, 3, 100):
            after = None
            while True:
                page = reads.jobs_for_key(engine, key_hash=keyed, limit=limit, after=after, status=status,
                                           stale_seconds=30)
                rows, more = jobs_repo.list_jobs(session, tenant_id=tenant_id, limit=limit, after=after, status=status)
                assert page.tenant_id == tenant_id and page.cursor_found and page.has_more == more
                assert [r.id for r in page.jobs] == [r.id for r in rows]
                for got, want in zip(page.jobs, rows):  # a page's JSON columns come as text
                    parsed = {f: json.loads(v) if f in reads.JSON_FIELDS and v is not None else v
                              for f, v in zip(FIELDS, (getattr(got, f) for f in FIELDS))}
                    assert parsed == {f: getattr(want, f) for f in FIELDS}
                if not more:
                    break
                after = rows[-1].id
    # a cursor that names no job of this tenant (another tenant's, unknown, malformed) is not page one
    other_job = session.scalar(Job.__table__.select().where(Job.tenant_id != tenant_id).with_only_columns(Job.id))
    for after in (other_job, "job_nope", "\x00"):
        page = reads.jobs_for_key(engine, key_hash=keyed, limit=5, after=after, stale_seconds=30)
        assert page.tenant_id == tenant_id and not page.cursor_found and page.jobs == []


def test_a_tenant_without_jobs_has_an_empty_page(engine, keyed):
    page = reads.jobs_for_key(engine, key_hash=keyed, limit=20, stale_seconds=30)
    assert page.tenant_id is not None and page.jobs == [] and not page.has_more and page.cursor_found


def test_a_stream_poll_reads_status_events_and_key_in_one_statement(engine, session, tenant, make_job,
                                                                     make_tenant):
    from jobs.tables import CANCELLED, JobEvent

    job = make_job(spec=_spec(CPU))
    key, row = api_keys.create_key(session, tenant_name=tenant.name)
    for seq in (1, 2, 3):
        session.add(JobEvent(job_id=job.id, seq=seq, attempt=0, type="log", message=f"m{seq}", data={"n": seq}))
    session.commit()
    kh = reads.key_hash(key)

    def poll(**kw):
        return reads.stream_poll(engine, **{"tenant_id": tenant.id, "job_id": job.id, "after_seq": 0, "limit": 10,
                                            **kw})

    first = poll(key_hash=kh, check_key=True)
    assert first.found and first.status == "queued"
    assert [(e.seq, e.message, e.data) for e in first.events] == [(1, "m1", {"n": 1}), (2, "m2", {"n": 2}),
                                                                  (3, "m3", {"n": 3})]
    wanted = jobs_repo.events(session, tenant_id=tenant.id, job_id=job.id)
    assert [(e.seq, e.type, e.attempt, e.created_at) for e in first.events] == [
        (e.seq, e.type, e.attempt, e.created_at) for e in wanted]
    assert [e.seq for e in poll(after_seq=1, limit=1).events] == [2]
    assert poll(after_seq=3).found and poll(after_seq=3).events == []  # nothing new: still there
    # another tenant's job, an unknown one: not found, the stream ends
    assert not poll(tenant_id=make_tenant("other").id).found and not poll(job_id="job_nope").found
    # a key of another tenant, an unknown key: the stream ends
    other_key, _ = api_keys.create_key(session, tenant_name="other")
    session.commit()
    assert not poll(key_hash=reads.key_hash(other_key), check_key=True).found
    assert not poll(key_hash="0" * 64, check_key=True).found
    api_keys.revoke_key(session, prefix_or_id=row.id)
    session.execute(update(Job).where(Job.id == job.id).values(status=CANCELLED))
    session.commit()
    assert not poll(key_hash=kh, check_key=True).found  # revoked: at the next check
    assert poll().status == CANCELLED  # between checks the key is not read


def test_the_tenant_of_a_key_in_one_statement(engine, session, tenant):
    key, row = api_keys.create_key(session, tenant_name=tenant.name)
    session.commit()
    assert reads.tenant_for_key(engine, key_hash=reads.key_hash(key)) == (tenant.id, tenant.name)
    assert reads.tenant_for_key(engine, key_hash=reads.key_hash("kd_" + "A" * 43)) is None
    assert reads.tenant_for_key(engine, key_hash=reads.key_hash("sk-not-ours")) is None
    api_keys.revoke_key(session, prefix_or_id=row.id)
    session.commit()
    assert reads.tenant_for_key(engine, key_hash=reads.key_hash(key)) is None
