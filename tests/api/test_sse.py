"""GET /v1/jobs/{id}/events as server-sent events (Accept: text/event-stream), without a worker:
a finished job's stream, resuming with Last-Event-ID or `after`, tenant checks, and a live stream
that keeps alive and ends when the job finishes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlalchemy import func, select

from api import sse
from jobs.tables import Job, JobEvent
from tests.factories import digits_job
from tests.utils import API_KEY, problem, psycopg_statements, upload

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def teacher_id(client, digits_teacher) -> str:
    return upload(client, digits_teacher[0], "teacher").json()["id"]


def new_job(client, teacher_id) -> dict:
    resp = client.post("/v1/jobs", json=digits_job(teacher_id))
    assert resp.status_code == 201, resp.text
    return resp.json()


def add_logs(client, job_id: str, n: int) -> None:
    """n log events, as a worker would have written them (seq follows on)."""
    with client.app.state.sessionmaker() as session:
        last = session.scalar(select(func.coalesce(func.max(JobEvent.seq), 0)).where(JobEvent.job_id == job_id))
        session.add_all([JobEvent(job_id=job_id, seq=last + 1 + i, attempt=0, type="log", message=f"line {i}",
                                  data={"i": i}) for i in range(n)])
        session.commit()


def finished_job(client, teacher_id) -> dict:
    job = new_job(client, teacher_id)
    add_logs(client, job["id"], 3)
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
    return resp.json()


def parse(text: str) -> tuple[list[dict], list[str]]:
    """(events as {id, event, data}, comment lines) of an SSE body."""
    events, comments = [], []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events, comments


def stream(client, job_id, headers=None, **params) -> tuple[list[dict], list[str]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**SSE, **(headers or {})},
                       params=params) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        return parse(resp.read().decode())


def test_a_finished_jobs_stream_sends_every_event_in_order_and_closes(client, teacher_id):
    job = finished_job(client, teacher_id)
    page = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    events, _ = stream(client, job["id"])
    assert [e["id"] for e in events] == [e["id"] for e in page] == list(range(1, len(page) + 1))
    assert [e["data"] for e in events] == page  # data is the EventOut JSON
    assert [e["event"] for e in events] == [e["type"] for e in page]
    assert events[-1]["event"] == "status" and events[-1]["data"]["data"]["status"] == "cancelled"


def test_last_event_id_and_after_resume_the_stream(client, teacher_id):
    job = finished_job(client, teacher_id)
    everything, _ = stream(client, job["id"])
    assert len(everything) >= 2
    n = everything[0]["id"]
    resumed, _ = stream(client, job["id"], headers={"Last-Event-ID": str(n)})
    assert resumed == everything[1:]
    assert stream(client, job["id"], after=n)[0] == everything[1:]
    # the header wins over the query (a browser reconnecting keeps the original URL)
    assert stream(client, job["id"], headers={"Last-Event-ID": str(everything[-1]["id"])}, after=0)[0] == []
    problem(client.get(f"/v1/jobs/{job['id']}/events", headers={**SSE, "Last-Event-ID": "x"}), 422)


def test_without_the_accept_header_the_route_answers_a_json_page(client, teacher_id):
    job = finished_job(client, teacher_id)
    resp = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1})
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["has_more"] is True and resp.json()["data"][0]["id"] == 1


def test_unknown_and_other_tenants_jobs_are_404_problems(client, teacher_id, other_tenant_headers):
    problem(client.get("/v1/jobs/job_doesnotexist/events", headers=SSE), 404)
    job = finished_job(client, teacher_id)
    problem(client.get(f"/v1/jobs/{job['id']}/events", headers={**SSE, **other_tenant_headers}), 404)


def test_a_live_stream_keeps_alive_and_ends_once_the_job_finishes(client, teacher_id):
    job = new_job(client, teacher_id)  # queued: not terminal, nothing runs it
    with client.app.state.sessionmaker() as session:
        tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job["id"]))

    async def run(fn, **kwargs):  # a poll in a thread, on the app's engine, as the route's `read` does
        return await asyncio.to_thread(fn, client.app.state.engine, **kwargs)

    async def follow() -> str:
        chunks = []
        gen = sse.event_stream(run, tenant_id=tenant_id, job_id=job["id"], after_seq=0, plain_key=API_KEY,
                               poll_seconds=0.05, keepalive_seconds=0.2)
        async for chunk in gen:
            chunks.append(chunk)
            if chunk == ": keep-alive\n\n" and chunks.count(chunk) == 1:
                assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        return "".join(chunks)

    text = asyncio.run(asyncio.wait_for(follow(), timeout=30))
    events, comments = parse(text)
    assert ": keep-alive" in comments
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "status" and events[-1]["data"]["data"]["status"] == "cancelled"


def test_a_live_streams_poll_is_one_statement(client, teacher_id, monkeypatch):
    """A stream polls every 0.5 s for as long as it is open, so what a poll costs is what open streams
    cost (bench/RESULTS.md, B8: 200 idle streams took 0.86 of a core). A poll is one statement, the
    key check included, with no pool ping before it; it was a session with BEGIN, two or three
    statements and ROLLBACK."""
    job = new_job(client, teacher_id)
    polls, real_poll = [], sse._poll

    def poll(*args, **kwargs):
        polls.append(1)
        return real_poll(*args, **kwargs)

    monkeypatch.setattr(sse, "KEY_CHECK_SECONDS", 0.0)  # every poll checks the key: the dearest poll
    monkeypatch.setattr(sse, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(sse, "_poll", poll)
    statements = psycopg_statements(monkeypatch)
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=SSE) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("retry:")
        before = len(statements), len(polls)
        deadline = time.monotonic() + 30
        while len(polls) - before[1] < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        counted = len(statements) - before[0], len(polls) - before[1]
    assert counted[1] >= 10, counted
    # a statement per poll (the last poll counted may not have sent its statement yet), no ping, no BEGIN
    assert counted[1] - 1 <= counted[0] <= counted[1] + 2, (counted, statements[before[0]:][:12])


def test_the_openapi_document_names_the_event_stream(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert set(op["responses"]["200"]["content"]) >= {"application/json", "text/event-stream"}
    report = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/report"]["get"]
    assert "text/html" in report["responses"]["200"]["content"] and "409" in report["responses"]


def test_accept_parsing():
    assert sse.wants_stream("text/event-stream")
    assert sse.wants_stream("application/json;q=0.5, Text/Event-Stream")
    assert not sse.wants_stream("text/event-stream;q=0")
    assert not sse.wants_stream("application/json") and not sse.wants_stream(None)
