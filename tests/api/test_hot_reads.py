"""GET /v1/jobs/{id} and GET /v1/jobs are one statement each (jobs/reads.py: the key, the job, its
queue position and the live workers' queues in one round trip, with no pool ping before it), and since
nothing about a key is cached, a revoked key is refused by every API process at its next request. A
read whose pooled connection was dropped (a database restart) is sent again on a new one."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from jobs import api_keys
from jobs.db import make_engine, make_sessionmaker
from tests.utils import API_KEY, problem, psycopg_statements, upload


@pytest.fixture
def queued_job(client, digits_teacher) -> str:
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    job = client.post("/v1/jobs", json={"teacher": {"file_id": teacher, **digits_teacher[1]},
                                        "hyperparameters": {"epochs": 1}})
    assert job.status_code == 201, job.text
    return job.json()["id"]


def test_a_job_and_a_page_are_one_statement_each(client, queued_job, monkeypatch):
    for path in (f"/v1/jobs/{queued_job}", "/v1/jobs?limit=20", f"/v1/jobs?limit=1&after={queued_job}&status=queued"):
        client.get(path)  # the pool has a connection
        sent = psycopg_statements(monkeypatch)
        resp = client.get(path)
        assert resp.status_code == 200, resp.text
        monkeypatch.undo()
        # the statement alone: no ping (";"), no BEGIN, COMMIT or ROLLBACK, no second query
        assert len(sent) == 1 and sent[0].strip() != ";", (path, sent)
    job = client.get(f"/v1/jobs/{queued_job}").json()
    assert job["status"] == "queued" and job["queue_position"] == 0 and "no live worker" in job["waiting_reason"]


def test_a_revoked_key_is_refused_by_every_api_process_at_once(clean_pg, live_stack, digits_teacher):
    base = live_stack(workers=0, KD_API_WORKERS="2").base_url
    engine = make_engine(clean_pg)
    try:
        with make_sessionmaker(engine)() as session:
            key, row = api_keys.create_key(session, tenant_name="short-lived")
            session.commit()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=30) as c:
            with open(digits_teacher[0], "rb") as f:
                teacher = c.post("/v1/files", files={"file": ("t.safetensors", f)}, data={"purpose": "teacher"},
                                 headers=headers).json()["id"]
            job = c.post("/v1/jobs", json={"teacher": {"file_id": teacher, **digits_teacher[1]}}, headers=headers)
            assert job.status_code == 201, job.text
            paths = [f"/v1/jobs/{job.json()['id']}", "/v1/jobs"]
            # new connections each time, so both processes answer (the kernel spreads the accepts)
            for _ in range(20):
                for path in paths:
                    assert httpx.get(base + path, headers=headers, timeout=30).status_code == 200
            with make_sessionmaker(engine)() as session:
                api_keys.revoke_key(session, prefix_or_id=row.id)
                session.commit()
            for _ in range(20):
                for path in paths:
                    problem(httpx.get(base + path, headers=headers, timeout=30), 401)
    finally:
        engine.dispose()


def test_a_page_is_the_same_json_whether_its_jobs_were_seen_before_or_not(client, queued_job, digits_teacher):
    from api import job_json
    from api.schemas.jobs import JobList, JobOut
    from jobs import jobs_repo, reads, workers_repo
    from jobs.tables import Job

    first = client.get("/v1/jobs?limit=20")
    again = client.get("/v1/jobs?limit=20")  # every row kept now
    assert first.content == again.content
    with client.app.state.sessionmaker() as session:
        rows, more = jobs_repo.list_jobs(session, tenant_id=session.get(Job, queued_job).tenant_id, limit=20)
        expected = []
        for r in rows:  # a queued job with why it waits, as GET /v1/jobs/{id} says it
            out = JobOut.from_row(r)
            if r.status == "queued":
                out.waiting_reason = workers_repo.queue_status(session, job=r, stale_seconds=30).waiting_reason
            expected.append(out)
    assert first.text == JobList(data=expected, has_more=more).model_dump_json()
    one = client.get(f"/v1/jobs/{queued_job}").json()
    listed = [j for j in first.json()["data"] if j["id"] == queued_job]
    assert listed == [{**one, "queue_position": None}] and "no live worker" in listed[0]["waiting_reason"]
    # a job that changed is a new row: its new JSON, not the kept one
    assert client.post(f"/v1/jobs/{queued_job}/cancel").json()["status"] == "cancelled"
    after = client.get("/v1/jobs?limit=20").json()["data"]
    assert [j["status"] for j in after if j["id"] == queued_job] == ["cancelled"]
    key = reads.key_hash(API_KEY)
    page = reads.jobs_for_key(client.app.state.engine, key_hash=key, limit=20, stale_seconds=30)
    assert job_json.page_json(page.jobs, True).endswith('],"has_more":true}')


def test_a_job_is_its_models_json_whether_seen_before_or_not(client, queued_job, digits_teacher):
    """GET /v1/jobs/{id} answers from the JSON kept by the job's row (api/job_json.py), with a queued
    job's place and reason filled in each time: the same bytes as JobOut says, first time or not."""
    from api.schemas.jobs import JobOut
    from jobs import workers_repo
    from jobs.tables import Job

    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    second = client.post("/v1/jobs", json={"teacher": {"file_id": teacher, **digits_teacher[1]},
                                           "hyperparameters": {"epochs": 1}}).json()["id"]

    def expected(job_id: str) -> str:
        with client.app.state.sessionmaker() as session:
            row = session.get(Job, job_id)
            out = JobOut.from_row(row)
            if row.status == "queued":
                status = workers_repo.queue_status(session, job=row, stale_seconds=30)
                out.queue_position, out.waiting_reason = status.position, status.waiting_reason
            return out.model_dump_json()

    for _ in range(2):  # the first answer makes the kept JSON, the second is made from it
        answers = {job_id: client.get(f"/v1/jobs/{job_id}").text for job_id in (queued_job, second)}
        assert answers == {job_id: expected(job_id) for job_id in (queued_job, second)}
    assert [client.get(f"/v1/jobs/{j}").json()["queue_position"] for j in (queued_job, second)] == [0, 1]
    # the job ahead leaves the queue: the second's row is unchanged, its place is not
    assert client.post(f"/v1/jobs/{queued_job}/cancel").json()["status"] == "cancelled"
    for job_id in (queued_job, second):
        assert client.get(f"/v1/jobs/{job_id}").text == expected(job_id)
    assert client.get(f"/v1/jobs/{second}").json()["queue_position"] == 0
    assert client.get(f"/v1/jobs/{queued_job}").json()["queue_position"] is None


def _drop_connections(url: str) -> int:
    """Terminate every other backend of the test database, as a database restart would."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]


def test_reads_and_sessions_survive_dropped_connections(clean_pg, client, queued_job):
    """The hot reads skip the pool's ping and retry once on a disconnect; every other checkout is pinged
    and replaced. Before either, a dropped connection was a 500 for the request that found it."""
    paths = (f"/v1/jobs/{queued_job}", "/v1/jobs?limit=20", "/v1/files")  # two hot reads, one ORM session
    for path in paths:
        assert client.get(path).status_code == 200  # the pool holds connections
    for path in paths * 2:
        assert _drop_connections(clean_pg) >= 1
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.text)
    assert client.get(f"/v1/jobs/{queued_job}").json()["id"] == queued_job


def test_a_hot_read_is_sent_at_most_twice(clean_pg, monkeypatch):
    """The retry is one: a read that finds its second connection dropped too raises, and the pool
    keeps no broken connection (the next read answers)."""
    from jobs import reads
    engine = make_engine(clean_pg)
    key = reads.key_hash("kd_" + "x" * 40)
    try:
        assert reads.tenant_for_key(engine, key_hash=key) is None  # the pool holds a connection
        real, sent = psycopg.Connection.execute, []

        def dropped(self, query, *args, **kwargs):
            sent.append(query)
            self.close()
            raise psycopg.OperationalError("the connection is lost")

        monkeypatch.setattr(psycopg.Connection, "execute", dropped)
        with pytest.raises(psycopg.OperationalError):
            reads.tenant_for_key(engine, key_hash=key)
        assert len(sent) == 2
        monkeypatch.setattr(psycopg.Connection, "execute", real)
        assert reads.tenant_for_key(engine, key_hash=key) is None
    finally:
        engine.dispose()
