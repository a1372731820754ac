"""One tenant cannot freeze the API for every other (issue 16 items 1 and 4), on a real `python -m api`
process over PostgreSQL: concurrent uploads racing for the last bytes of a quota, and uploads that
stall mid-body. While they happen and after, another tenant's requests and /readyz still answer."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from sqlalchemy import text

from jobs import api_keys
from jobs.db import make_engine, make_sessionmaker
from harness.services import Proc
from tests.utils import API_KEY

pytestmark = pytest.mark.slow
PARALLEL = 12  # uploads racing for the room of two
ROUNDS = 3
ANSWER_WITHIN = 5.0  # seconds: an API that answers; the frozen one never did


@pytest.fixture
def api(live_stack):
    def start(**env: str) -> tuple[str, Proc]:
        stack = live_stack(workers=0, stop_timeout=5, KD_API_WORKERS="1", **env)
        return stack.base_url, stack.api

    return start


def _other_tenant_key(database_url: str) -> str:
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        key, _ = api_keys.create_key(session, tenant_name="bystander")
        session.commit()
    engine.dispose()
    return key


def _answers(url: str, key: str) -> None:
    """/healthz, /readyz and another tenant's listing answer promptly."""
    with httpx.Client(base_url=url, timeout=ANSWER_WITHIN) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_parallel_uploads_at_the_quota_leave_the_api_answering(api, clean_pg, tmp_path):
    file_bytes = 20_000
    # room for exactly four uploads of this size (their multipart overhead aside)
    url, proc = api(KD_QUOTA_STORED_BYTES=str(4 * file_bytes + 100))
    bystander = _other_tenant_key(clean_pg)
    payload = tmp_path / "data.csv"
    payload.write_text("a,label\n" + "".join(f"{i % 7}.0,{i % 2}\n" for i in range(10**6))[: file_bytes - 8])
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:  # two files in: two below the quota
        for _ in range(2):
            assert client.post("/v1/files", data={"purpose": "dataset"},
                               files={"file": ("d.csv", payload.read_bytes())}).status_code == 201
    for _ in range(ROUNDS):  # the freeze was a race: give it several chances
        statuses: list = []

        def one_upload() -> None:
            try:
                r = httpx.post(f"{url}/v1/files", headers=headers, data={"purpose": "dataset"},
                               files={"file": ("d.csv", payload.read_bytes())}, timeout=30)
                statuses.append(r.status_code)
                if r.status_code == 201:
                    created.append(r.json()["id"])
            except httpx.HTTPError as e:
                statuses.append(repr(e))

        created: list[str] = []
        threads = [threading.Thread(target=one_upload) for _ in range(PARALLEL)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        assert sorted(statuses, key=str) == [201, 201] + [429] * (PARALLEL - 2), (statuses, proc.output()[-3000:])
        _answers(url, bystander)
        for file_id in created:  # room for two again
            assert httpx.delete(f"{url}/v1/files/{file_id}", headers=headers, timeout=10).status_code == 204
    _answers(url, bystander)
    # and no transaction was left holding a lock
    engine = make_engine(clean_pg)
    with engine.connect() as conn:
        idle = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND state = 'idle in transaction'")).scalar()
    engine.dispose()
    assert idle == 0


def _stall_upload(port: int, sent: threading.Event, stop: threading.Event, answer: list) -> None:
    """Start a multipart upload, send a few bytes of it, then send nothing until told to stop; what
    the server answers meanwhile goes to `answer`."""
    body_head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n--b\r\n"
                 b"Content-Disposition: form-data; name=\"file\"; filename=\"x.csv\"\r\n\r\na,la")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                  + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n" + body_head)
        sent.set()
        s.settimeout(0.5)
        received = b""
        while not stop.is_set():
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:  # the server closed the connection
                break
            received += data
            if b"\r\n\r\n" in received and received.endswith(b"}"):  # a whole problem+json answer
                break
        answer.append(received)


def test_stalled_uploads_hold_no_database_slot_and_are_cut(api, clean_pg, tmp_path):
    url, proc = api(KD_UPLOAD_IDLE_TIMEOUT_SECONDS="4")
    port = int(url.rsplit(":", 1)[1])
    bystander = _other_tenant_key(clean_pg)
    stop = threading.Event()
    stalls = []
    for _ in range(25):  # more than the pool's 15 slots
        sent, answer = threading.Event(), []
        t = threading.Thread(target=_stall_upload, args=(port, sent, stop, answer), daemon=True)
        t.start()
        stalls.append((t, sent, answer))
    for _, sent, _ in stalls:
        assert sent.wait(10)
    time.sleep(0.5)
    try:
        _answers(url, bystander)  # while all of them stall
        tmp = tmp_path / "data" / "tmp"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (list(tmp.glob("upload-*.part"))
                                               or not all(answer for _, _, answer in stalls)):
            time.sleep(0.5)
        assert not list(tmp.glob("upload-*.part")), "the stalled uploads' temp files were not removed"
    finally:
        stop.set()
    for t, _, answer in stalls:  # each was answered 408 problem+json naming the setting
        t.join(10)
        head, _, body = answer[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"content-type: application/problem+json" in head.lower(), head
        assert b"KD_UPLOAD_IDLE_TIMEOUT_SECONDS" in body, body
    _answers(url, bystander)
    with httpx.Client(base_url=url, timeout=ANSWER_WITHIN) as client:  # nothing was stored
        assert client.get("/v1/files", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"] == []


def _queued_job(url: str, headers: dict, teacher_path) -> str:
    """A job nobody runs (no worker): its event stream stays open."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        with open(teacher_path, "rb") as f:
            tid = client.post("/v1/files", data={"purpose": "teacher"}, files={"file": ("t.safetensors", f)}).json()["id"]
        job = client.post("/v1/jobs", json={"teacher": {"file_id": tid, "arch": "mlp",
                                                        "arch_params": {"hidden_sizes": [128]}},
                                            "hyperparameters": {"epochs": 1}})
        assert job.status_code == 201, job.text
        return job.json()["id"]


def _open_stream(url: str, key: str, job_id: str, opened: threading.Event, lines: list, stop: threading.Event):
    try:
        with httpx.Client(timeout=httpx.Timeout(60, connect=10)) as client:
            with client.stream("GET", f"{url}/v1/jobs/{job_id}/events",
                               headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}) as resp:
                lines.append(resp.status_code)
                opened.set()
                for line in resp.iter_lines():
                    lines.append(line)
                    if stop.is_set():
                        return
        lines.append("<end>")
    except httpx.HTTPError as e:  # the API stopped under a stream the test left open
        lines.append(f"<{type(e).__name__}>")


def test_open_event_streams_hold_no_database_slot(api, clean_pg, digits_teacher):
    url, proc = api(KD_MAX_STREAMS_PER_TENANT="30")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    job_id = _queued_job(url, headers, digits_teacher[0])
    bystander = _other_tenant_key(clean_pg)
    stop = threading.Event()
    streams = []
    for _ in range(25):  # more than the pool's 15 connections
        opened, lines = threading.Event(), []
        threading.Thread(target=_open_stream, args=(url, API_KEY, job_id, opened, lines, stop), daemon=True).start()
        streams.append((opened, lines))
    for opened, lines in streams:
        assert opened.wait(20) and lines[0] == 200, (lines, proc.output()[-2000:])
    try:
        _answers(url, bystander)
        with httpx.Client(base_url=url, timeout=ANSWER_WITHIN) as client:
            assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    finally:
        stop.set()


def test_a_revoked_keys_stream_ends_and_streams_per_tenant_are_bounded(api, clean_pg, digits_teacher):
    from kdcore.data import load_builtin  # noqa: F401 (the teacher fixture needs the digits data anyway)

    url, proc = api(KD_MAX_STREAMS_PER_TENANT="2")
    engine = make_engine(clean_pg)
    with make_sessionmaker(engine)() as session:
        key, row = api_keys.create_key(session, tenant_name="streamer")
        session.commit()
    job_id = _queued_job(url, {"Authorization": f"Bearer {key}"}, digits_teacher[0])
    stop = threading.Event()
    opened = [threading.Event(), threading.Event()]
    lines: list[list] = [[], []]
    for i in range(2):
        threading.Thread(target=_open_stream, args=(url, key, job_id, opened[i], lines[i], stop), daemon=True).start()
    assert opened[0].wait(20) and opened[1].wait(20)
    third = httpx.get(f"{url}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {key}",
                                                                  "Accept": "text/event-stream"}, timeout=10)
    assert third.status_code == 429 and "KD_MAX_STREAMS_PER_TENANT" in third.json()["detail"]
    with make_sessionmaker(engine)() as session:
        api_keys.revoke_key(session, prefix_or_id=row.id)
        session.commit()
    engine.dispose()
    deadline = time.monotonic() + 15  # KEY_CHECK_SECONDS (5) and a poll, with room
    while time.monotonic() < deadline and not all(ls and ls[-1] == "<end>" for ls in lines):
        time.sleep(0.2)
    stop.set()
    assert all(ls[-1] == "<end>" for ls in lines), lines
    # the ended streams gave their places back: a valid key of that tenant may stream again... (revoked: 401)
    assert httpx.get(f"{url}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {key}",
                                                                "Accept": "text/event-stream"}, timeout=10).status_code == 401


def _hold_stream(url: str, job_id: str, barrier: threading.Barrier, statuses: list, stop: threading.Event) -> None:
    """Open an event stream when every thread is ready, note its status, hold it until told to stop."""
    with httpx.Client(timeout=httpx.Timeout(30, connect=10)) as client:
        barrier.wait(20)
        with client.stream("GET", f"{url}/v1/jobs/{job_id}/events",
                           headers={"Authorization": f"Bearer {API_KEY}", "Accept": "text/event-stream"}) as resp:
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                resp.read()
                assert "KD_MAX_STREAMS_PER_TENANT" in resp.json()["detail"]
            stop.wait(60)


def test_streams_opened_together_do_not_pass_the_per_tenant_limit(api, digits_teacher):
    """Requests that arrive in the same instant are counted before any of them streams: exactly the
    limit is let through (before: each counted only from its first byte, so a burst passed it)."""
    url, proc = api(KD_MAX_STREAMS_PER_TENANT="3")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    job_id = _queued_job(url, headers, digits_teacher[0])
    burst = 12
    barrier, statuses, stop = threading.Barrier(burst), [], threading.Event()
    threads = [threading.Thread(target=_hold_stream, args=(url, job_id, barrier, statuses, stop), daemon=True)
               for _ in range(burst)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(statuses) < burst and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert sorted(statuses) == [200] * 3 + [429] * (burst - 3), (statuses, proc.output()[-2000:])
    finally:
        stop.set()
    for t in threads:
        t.join(10)
    # the closed streams gave their places back
    deadline = time.monotonic() + 15
    while True:
        with httpx.Client(timeout=10) as client, client.stream(
                "GET", f"{url}/v1/jobs/{job_id}/events", headers={**headers, "Accept": "text/event-stream"}) as resp:
            if resp.status_code == 200:
                break
        assert time.monotonic() < deadline, "closed streams kept their places"
        time.sleep(0.5)


def test_event_ids_past_the_column_are_422_not_500(api, digits_teacher):
    url, _ = api()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    job_id = _queued_job(url, headers, digits_teacher[0])
    assert httpx.get(f"{url}/v1/jobs/{job_id}/events", params={"after": 2**31}, headers=headers).status_code == 422
    resp = httpx.get(f"{url}/v1/jobs/{job_id}/events", headers={**headers, "Accept": "text/event-stream",
                                                               "Last-Event-ID": str(2**31)})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "Last-Event-ID"
