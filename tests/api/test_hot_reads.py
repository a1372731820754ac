"""GET /v1/jobs/{id} and GET /v1/jobs are one statement each (jobs/reads.py: the key, the job, its
queue position and the live workers' queues in one round trip), and since nothing about a key is
cached, a revoked key is refused by every API process at its next request."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from jobs import api_keys
from jobs.db import make_engine, make_sessionmaker
from tests.utils import API_KEY, problem, upload


@pytest.fixture
def queued_job(client, digits_teacher) -> str:
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    job = client.post("/v1/jobs", json={"teacher": {"file_id": teacher, **digits_teacher[1]},
                                        "hyperparameters": {"epochs": 1}})
    assert job.status_code == 201, job.text
    return job.json()["id"]


def _statements(monkeypatch) -> list[str]:
    """Every statement and transaction command psycopg sends from here on (pool pings included)."""
    sent: list[str] = []
    real_execute, real_command = psycopg.Cursor.execute, psycopg.Connection._exec_command

    def execute(self, query, *args, **kwargs):
        sent.append(str(query)[:60])
        return real_execute(self, query, *args, **kwargs)

    def command(self, command, *args, **kwargs):
        sent.append(bytes(command).decode()[:60] if isinstance(command, (bytes, bytearray)) else str(command)[:60])
        return real_command(self, command, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.Connection, "_exec_command", command)
    return sent


def test_a_job_and_a_page_are_one_statement_each(client, queued_job, monkeypatch):
    for path in (f"/v1/jobs/{queued_job}", "/v1/jobs?limit=20", f"/v1/jobs?limit=1&after={queued_job}&status=queued"):
        client.get(path)  # the pool has a connection
        sent = _statements(monkeypatch)
        resp = client.get(path)
        assert resp.status_code == 200, resp.text
        monkeypatch.undo()
        # the pool's ping (";") and the statement: no BEGIN, COMMIT or ROLLBACK, no second query
        assert [s for s in sent if s.strip() != ";"] == [sent[-1]] and len(sent) <= 2, (path, sent)
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
    from jobs import jobs_repo, reads
    from jobs.tables import Job

    first = client.get("/v1/jobs?limit=20")
    again = client.get("/v1/jobs?limit=20")  # every row kept now
    assert first.content == again.content
    with client.app.state.sessionmaker() as session:
        rows, more = jobs_repo.list_jobs(session, tenant_id=session.get(Job, queued_job).tenant_id, limit=20)
    assert first.text == JobList(data=[JobOut.from_row(r) for r in rows], has_more=more).model_dump_json()
    # a job that changed is a new row: its new JSON, not the kept one
    assert client.post(f"/v1/jobs/{queued_job}/cancel").json()["status"] == "cancelled"
    after = client.get("/v1/jobs?limit=20").json()["data"]
    assert [j["status"] for j in after if j["id"] == queued_job] == ["cancelled"]
    key = reads.key_hash(API_KEY)
    page = reads.jobs_for_key(client.app.state.engine, key_hash=key, limit=20)
    assert job_json.page_json(page.jobs, True).endswith('],"has_more":true}')
