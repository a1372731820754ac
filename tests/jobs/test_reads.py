"""jobs/reads.py on SQLite and PostgreSQL: the one-statement reads behind GET /v1/jobs/{id} and
GET /v1/jobs answer exactly what the repositories answer (the job, its queue position and the
reason it waits, the page and its cursor), and refuse an unknown or revoked key in that statement,
with no delay."""

from __future__ import annotations

import asyncio
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


@pytest.fixture
def read(engine):
    """`read(reads.X, **kwargs)`: X through the engine in this thread, and on PostgreSQL also through an
    AsyncReader on an event loop (the API's driver), which must answer the same."""
    if engine.dialect.name != "postgresql":
        yield lambda fn, **kwargs: fn(engine, **kwargs)
        return
    loop = asyncio.new_event_loop()
    reader = reads.AsyncReader(engine.url.render_as_string(hide_password=False), size=2)

    def both(fn, **kwargs):
        answer = fn(engine, **kwargs)
        assert loop.run_until_complete(reader.read(fn, **kwargs)) == answer
        return answer

    yield both
    reader.close()
    loop.close()


def _parsed(row) -> dict:
    """A read's row as the job's fields, its JSON columns (text, as the reads send them) parsed."""
    return {f: json.loads(v) if f in reads.JSON_FIELDS and v is not None else v
            for f, v in zip(FIELDS, (getattr(row, f) for f in FIELDS))}


def _same_job(row, job: Job) -> None:
    assert _parsed(row) == {f: getattr(job, f) for f in FIELDS}
    assert row.created_at.utcoffset() == timedelta(0)  # in UTC, as UTCDateTime returns it


def test_a_job_and_where_it_waits_in_one_statement(read, session, make_job, keyed, make_tenant):
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
        found = read(reads.job_for_key, key_hash=keyed, job_id=job.id, stale_seconds=30, now=now)
        row = session.get(Job, job.id, populate_existing=True)
        assert found.tenant_id == job.tenant_id
        _same_job(found.job, row)
        if row.status == "queued":
            expected = workers_repo.queue_status(session, job=row, stale_seconds=30, now=now)
            assert found.queue_position == expected.position
            assert workers_repo.waiting_reason(json.loads(found.job.spec), found.live_queues) == expected.waiting_reason
        else:
            assert found.queue_position is None and found.live_queues is None
    assert read(reads.job_for_key, key_hash=keyed, job_id=cpu[2].id, stale_seconds=30, now=now).queue_position == 1
    gpu = read(reads.job_for_key, key_hash=keyed, job_id=gpu2.id, stale_seconds=30, now=now)
    assert gpu.queue_position == 0 and "kd.cuda.2" in workers_repo.waiting_reason(json.loads(gpu.job.spec),
                                                                                  gpu.live_queues)
    # the worker stopped beating: nobody serves kd.cpu any more
    later = read(reads.job_for_key, key_hash=keyed, job_id=cpu[1].id, stale_seconds=30,
                 now=now + timedelta(seconds=31))
    assert later.live_queues == frozenset() and workers_repo.waiting_reason(json.loads(later.job.spec),
                                                                            later.live_queues)
    # another tenant's job answers like no job; an id we never issue is never sent
    for job_id in (other.id, "job_nope", "job\x00x", "x" * 10_000):
        found = read(reads.job_for_key, key_hash=keyed, job_id=job_id, stale_seconds=30)
        assert found.tenant_id == cpu[0].tenant_id and found.job is None


def test_a_page_carries_the_live_workers_queues(read, session, make_job, keyed):
    """GET /v1/jobs's statement reads the queues live workers serve once, for each queued job's
    waiting_reason (the dashboard no longer asks job by job)."""
    now = utcnow()
    make_job(spec=_spec(CPU))
    workers_repo.register(session, name="w@a", hostname="a", pid=1, queues=["kd.cpu", "kd.cuda.1"], device="cuda",
                          gpus=1, now=now)
    session.commit()
    page = read(reads.jobs_for_key, key_hash=keyed, limit=20, stale_seconds=30, now=now)
    assert page.live_queues == workers_repo.live_queues(session, stale_seconds=30, now=now) == {"kd.cpu", "kd.cuda.1"}
    later = read(reads.jobs_for_key, key_hash=keyed, limit=20, stale_seconds=30, now=now + timedelta(seconds=31))
    assert later.live_queues == frozenset() and len(later.jobs) == 1


def test_an_unknown_or_revoked_key_reads_nothing_at_once(read, session, tenant, make_job):
    job = make_job(spec=_spec(CPU))
    key, row = api_keys.create_key(session, tenant_name=tenant.name)
    session.commit()
    assert read(reads.job_for_key, key_hash=reads.key_hash(key), job_id=job.id, stale_seconds=30).job is not None
    assert read(reads.jobs_for_key, key_hash=reads.key_hash(key), limit=5, stale_seconds=30).jobs
    api_keys.revoke_key(session, prefix_or_id=row.id)
    session.commit()
    for key_hash in (reads.key_hash(key), reads.key_hash("kd_" + "A" * 43), reads.key_hash("sk-other")):
        assert read(reads.job_for_key, key_hash=key_hash, job_id=job.id, stale_seconds=30) == reads.KeyedJob(None,
                                                                                                               None)
        page = read(reads.jobs_for_key, key_hash=key_hash, limit=5, stale_seconds=30)
        assert page.tenant_id is None and page.jobs == []


def test_pages_match_the_repository(read, session, make_job, keyed, make_tenant):
    jobs = [make_job(spec=_spec(CPU if i % 3 else CUDA1)) for i in range(7)]
    make_job(tenant_id=make_tenant("other").id)
    session.execute(update(Job).where(Job.id.in_([jobs[1].id, jobs[4].id])).values(status=RUNNING))
    session.commit()
    tenant_id = jobs[0].tenant_id
    for status in (None, "queued", "running", "failed"):
        for limit in (1, 2, 3, 100):
            after = None
            while True:
                page = read(reads.jobs_for_key, key_hash=keyed, limit=limit, after=after, status=status,
                                           stale_seconds=30)
                rows, more = jobs_repo.list_jobs(session, tenant_id=tenant_id, limit=limit, after=after, status=status)
                assert page.tenant_id == tenant_id and page.cursor_found and page.has_more == more
                assert [r.id for r in page.jobs] == [r.id for r in rows]
                for got, want in zip(page.jobs, rows):
                    _same_job(got, want)
                if not more:
                    break
                after = rows[-1].id
    # a cursor that names no job of this tenant (another tenant's, unknown, malformed) is not page one
    other_job = session.scalar(Job.__table__.select().where(Job.tenant_id != tenant_id).with_only_columns(Job.id))
    for after in (other_job, "job_nope", "\x00"):
        page = read(reads.jobs_for_key, key_hash=keyed, limit=5, after=after, stale_seconds=30)
        assert page.tenant_id == tenant_id and not page.cursor_found and page.jobs == []


def test_a_tenant_without_jobs_has_an_empty_page(read, keyed):
    page = read(reads.jobs_for_key, key_hash=keyed, limit=20, stale_seconds=30)
    assert page.tenant_id is not None and page.jobs == [] and not page.has_more and page.cursor_found


def test_a_stream_poll_reads_status_events_and_key_in_one_statement(read, session, tenant, make_job,
                                                                     make_tenant):
    from jobs.tables import CANCELLED, JobEvent

    job = make_job(spec=_spec(CPU))
    key, row = api_keys.create_key(session, tenant_name=tenant.name)
    for seq in (1, 2, 3):
        session.add(JobEvent(job_id=job.id, seq=seq, attempt=0, type="log", message=f"m{seq}", data={"n": seq}))
    session.commit()
    kh = reads.key_hash(key)

    def poll(**kw):
        return read(reads.stream_poll, **{"tenant_id": tenant.id, "job_id": job.id, "after_seq": 0, "limit": 10,
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


def test_the_tenant_of_a_key_in_one_statement(read, session, tenant):
    key, row = api_keys.create_key(session, tenant_name=tenant.name)
    session.commit()
    assert read(reads.tenant_for_key, key_hash=reads.key_hash(key)) == (tenant.id, tenant.name)
    assert read(reads.tenant_for_key, key_hash=reads.key_hash("kd_" + "A" * 43)) is None
    assert read(reads.tenant_for_key, key_hash=reads.key_hash("sk-not-ours")) is None
    api_keys.revoke_key(session, prefix_or_id=row.id)
    session.commit()
    assert read(reads.tenant_for_key, key_hash=reads.key_hash(key)) is None


def _reader_loop(pg_engine):
    return reads.AsyncReader(pg_engine.url.render_as_string(hide_password=False), size=2), asyncio.new_event_loop()


def test_the_async_reader_keeps_its_size_and_its_connections(pg_engine, monkeypatch):
    """Ten reads at once on a reader of 2 open 2 connections, and later reads reuse them."""
    import psycopg

    reader, loop = _reader_loop(pg_engine)
    opened, real = [], psycopg.AsyncConnection.connect.__func__

    async def connect(cls, *args, **kwargs):
        opened.append(1)
        return await real(cls, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(connect))
    key = reads.key_hash("kd_" + "x" * 40)

    async def many():
        return await asyncio.gather(*(reader.read(reads.tenant_for_key, key_hash=key) for _ in range(10)))

    try:
        assert loop.run_until_complete(many()) == [None] * 10
        assert loop.run_until_complete(many()) == [None] * 10
        assert len(opened) == 2
    finally:
        reader.close()
        loop.close()


def test_the_async_reader_sends_a_read_at_most_twice(pg_engine, monkeypatch):
    """A connection found dropped is replaced and the read sent once more; a second drop raises, and the
    reader keeps no broken connection (the next read answers)."""
    import psycopg

    reader, loop = _reader_loop(pg_engine)
    key = reads.key_hash("kd_" + "x" * 40)
    real, sent = psycopg.AsyncConnection.execute, []

    async def dropped(self, query, *args, **kwargs):
        sent.append(query)
        self.pgconn.finish()
        raise psycopg.OperationalError("the connection is lost")

    def drops(times):
        async def execute(self, query, *args, **kwargs):
            if len(sent) < times:
                return await dropped(self, query, *args, **kwargs)
            sent.append(query)
            return await real(self, query, *args, **kwargs)
        return execute

    try:
        assert loop.run_until_complete(reader.read(reads.tenant_for_key, key_hash=key)) is None
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", drops(1))
        assert loop.run_until_complete(reader.read(reads.tenant_for_key, key_hash=key)) is None
        assert len(sent) == 2  # dropped, then answered on a new connection
        sent.clear()
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", drops(2))
        with pytest.raises(psycopg.OperationalError):
            loop.run_until_complete(reader.read(reads.tenant_for_key, key_hash=key))
        assert len(sent) == 2
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", real)
        assert loop.run_until_complete(reader.read(reads.tenant_for_key, key_hash=key)) is None
    finally:
        reader.close()
        loop.close()


def test_a_read_cancelled_mid_statement_closes_its_connection(pg_engine, monkeypatch):
    """A client that goes away cancels its read; the connection, its protocol state unknown, is closed,
    not given to the next read."""
    import psycopg

    reader, loop = _reader_loop(pg_engine)
    key = reads.key_hash("kd_" + "x" * 40)
    real, started, used = psycopg.AsyncConnection.execute, [], []

    async def slow(self, query, *args, **kwargs):
        started.append(self)
        await asyncio.sleep(30)

    async def recording(self, query, *args, **kwargs):
        used.append(self)
        return await real(self, query, *args, **kwargs)

    async def cancel_one():
        task = asyncio.ensure_future(reader.read(reads.tenant_for_key, key_hash=key))
        while not started:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", slow)
        loop.run_until_complete(cancel_one())
        assert started[0].closed
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", recording)
        assert loop.run_until_complete(reader.read(reads.tenant_for_key, key_hash=key)) is None
        assert used and used[0] is not started[0]
    finally:
        reader.close()
        loop.close()
