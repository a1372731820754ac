"""Crashes leak no disk (issue 16 item 6), on real `python -m api` processes over PostgreSQL: an API
killed with SIGKILL mid-body leaves its upload temp file, one killed between the store's put and
the database commit leaves a stored object no row names; the API processes that live (and the one
started after) remove both, and nothing a live upload or a recorded file needs."""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from jobs.db import make_engine, make_sessionmaker
from jobs.tables import File
from harness.services import free_port, Proc, service_env, wait_healthy
from tests.utils import API_KEY, s3_client

pytestmark = pytest.mark.slow
GRACE = "2"  # KD_IDEMPOTENCY_IN_FLIGHT_SECONDS: how old an unrecorded object must be before it goes
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CSV = b"a,b,label\n" + b"".join(b"%d.0,%d.5,%d\n" % (i, i, i % 3) for i in range(30_000))

# `python -m api` whose files_repo.create, for an upload named crash.csv, says where it is and waits:
# the object is in the store, the row not yet committed (and the tenant's row locked). Test code
# only: nothing in the service can be told to pause.
PAUSING_API = """
import os, time
from pathlib import Path
from jobs import files_repo
original = files_repo.create
def create(session, **row):
    if row["filename"] == "crash.csv":
        Path(os.environ["TEST_PAUSED_AT"]).write_text(row["storage_key"])
        time.sleep(3600)
    return original(session, **row)
files_repo.create = create
from api.__main__ import main
main()
"""


class Apis:
    def __init__(self, database_url: str, broker_url: str, tmp_path: Path, store_env: dict[str, str]):
        self.tmp_path, self.data = tmp_path, tmp_path / "data"
        self.env = dict(database_url=database_url, broker_url=broker_url, data_dir=self.data, api_key=API_KEY,
                        KD_API_WORKERS="1", KD_IDEMPOTENCY_IN_FLIGHT_SECONDS=GRACE,
                        KD_UPLOAD_IDLE_TIMEOUT_SECONDS="300", **store_env)
        self.store_env = store_env
        self.started: list[Proc] = []
        self.paused_at = tmp_path / "paused-at"

    def start(self, *, pausing: bool = False) -> tuple[str, Proc]:
        port = free_port()
        args = [sys.executable, "-c", PAUSING_API] if pausing else [sys.executable, "-m", "api"]
        env = service_env(**self.env, KD_API_PORT=str(port), TEST_PAUSED_AT=str(self.paused_at))
        proc = Proc(args, env, self.tmp_path / f"api-{len(self.started)}.log")
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        return url, proc

    @staticmethod
    def kill(proc: Proc) -> None:
        proc.popen.kill()
        proc.popen.wait(timeout=10)

    def temp_files(self) -> list[str]:
        tmp = self.data / "tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []

    def stored(self) -> list[str]:
        """Everything in the artifact store, temporaries and unfinished S3 multipart uploads included."""
        if "KD_ARTIFACT_URL" not in self.store_env:
            root = self.data / "artifacts"
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
        bucket = self.store_env["KD_ARTIFACT_URL"].removeprefix("s3://").split("/")[0]
        client = s3_client(self.store_env["KD_S3_ENDPOINT_URL"])
        names = [item["Key"].removeprefix("kd/") for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket) for item in page.get("Contents", [])]
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted(names + [f"upload:{u['Key']}" for u in uploads])

    def rows(self) -> list[str]:
        engine = make_engine(self.env["database_url"])
        with make_sessionmaker(engine)() as session:
            keys = sorted(session.scalars(select(File.storage_key)))
        engine.dispose()
        return keys

    def close(self) -> None:
        for proc in self.started:
            proc.stop(sig_timeout=5)


@pytest.fixture
def apis(clean_pg, redis_url, tmp_path, request):
    store_env = request.getfixturevalue("s3_env") if getattr(request, "param", "local") == "s3" else {}
    made = Apis(clean_pg, redis_url, tmp_path, store_env)
    yield made
    made.close()


def upload(url: str, name: str, data: bytes = CSV, *, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/files", headers=HEADERS, data={"purpose": "dataset"},
                      files={"file": (name, data)}, timeout=timeout)


def wait_until(predicate, *, timeout: float = 30, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: {what}")
        time.sleep(0.2)


class StalledUpload:
    """A multipart upload that sends its head and half its file, then waits (the connection open)."""

    def __init__(self, url: str, data: bytes = CSV):
        boundary = b"stall0boundary"
        head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndataset\r\n'
                b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n')
        body = head + data + b"\r\n--" + boundary + b"--\r\n"
        self.half, self.rest = body[: len(head) + len(data) // 2], body[len(head) + len(data) // 2:]
        port = int(url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                          + b"\r\nContent-Type: multipart/form-data; boundary=" + boundary
                          + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                          + self.half)

    def finish(self) -> bytes:
        self.sock.sendall(self.rest)
        answer = b""
        while chunk := self.sock.recv(65536):
            answer += chunk
        self.sock.close()
        return answer


def test_a_kill_mid_body_leaves_no_temp_file_and_spares_live_uploads(apis):
    url_a, proc_a = apis.start()
    kept = upload(url_a, "kept.csv")
    assert kept.status_code == 201, kept.text
    live = StalledUpload(url_a)
    wait_until(lambda: apis.temp_files(), what="the stalled upload has no temp file")

    # A second API process on the same data directory starts (and sweeps) while A's upload is live:
    # the live upload's temp file stays, and the upload completes.
    url_b, proc_b = apis.start()
    time.sleep(3)  # B's start-up round and a few periodic ones (GRACE 2 s: every 1 s)
    assert len(apis.temp_files()) == 1, "a live upload's temp file was removed"
    head, _, body = live.finish().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), head + body
    assert b'"sha256":"' + hashlib.sha256(CSV).hexdigest().encode() in body

    # Now A dies mid-body (SIGKILL): its temp file is left, with half the upload in it.
    doomed = StalledUpload(url_a)  # (kept referenced: a closed connection would end the upload cleanly)
    wait_until(lambda: apis.temp_files(), what="the second stalled upload has no temp file")
    apis.kill(proc_a)
    left = apis.temp_files()
    assert len(left) == 1 and (apis.data / "tmp" / left[0]).stat().st_size > 0, left
    apis.kill(proc_b)  # and the other process too: the one started next finds the leftover
    doomed.sock.close()

    url_c, proc_c = apis.start()
    wait_until(lambda: apis.temp_files() == [], what=f"the killed upload's temp file is still there: "
                                                     f"{apis.temp_files()}\n{proc_c.output()[-2000:]}")
    time.sleep(2)  # recorded files are never swept
    assert len(apis.rows()) == 2 and apis.stored() == apis.rows()
    got = httpx.get(f"{url_c}/v1/files/{kept.json()['id']}/content", headers=HEADERS, timeout=30)
    assert got.status_code == 200 and got.content == CSV


@pytest.mark.parametrize("apis", ["local", "s3"], indirect=True)
def test_a_kill_between_the_store_put_and_the_commit_leaves_no_object(apis):
    url, proc = apis.start(pausing=True)
    kept = upload(url, "kept.csv")
    assert kept.status_code == 201, kept.text
    recorded = apis.rows()
    assert len(recorded) == 1 and apis.stored() == recorded

    try:  # the request pauses after the put, in the transaction that would insert its row
        upload(url, "crash.csv", timeout=3)
        raise AssertionError("the pausing API answered")
    except httpx.TimeoutException:
        pass
    wait_until(apis.paused_at.exists, what="the upload did not reach the commit")
    orphan = apis.paused_at.read_text()
    assert orphan in apis.stored()
    apis.kill(proc)
    assert orphan in apis.stored() and apis.rows() == recorded  # an object no row names

    url, proc = apis.start()  # a new API process, the only one
    wait_until(lambda: apis.stored() == recorded,
               what=f"the unrecorded object is still stored: {apis.stored()}\n{proc.output()[-2000:]}")
    assert apis.temp_files() == [] and apis.rows() == recorded
    # and the service works on: a new upload is recorded, stored, and outlives several sweeps
    again = upload(url, "again.csv", CSV[: CSV.index(b"\n", 20_000) + 1])
    assert again.status_code == 201, again.text
    time.sleep(2 * float(GRACE) + 1)
    assert apis.stored() == apis.rows() and len(apis.rows()) == 2
    listed = httpx.get(f"{url}/v1/files", headers=HEADERS, timeout=10).json()["data"]
    assert sorted(f["id"] for f in listed) == sorted([kept.json()["id"], again.json()["id"]])
