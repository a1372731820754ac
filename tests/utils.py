"""Helpers and constants the test modules share: plain functions, no fixtures (those live in the
conftest.py files). Request helpers (`upload`, `problem`), job helpers (`submit`, `wait_for`), store
helpers. The service processes (API, workers) are started by harness/services.py, the harness the
benchmarks use as well; the job bodies and teachers the tests build are in tests/factories.py."""

from __future__ import annotations

import contextlib
import os
import time

from jobs.artifact_store import LocalArtifactStore
from jobs.settings import Settings
from tests.factories import digits_job

# The Redis database this test run flushes and uses as its broker: one of 1..11 per pytest process,
# so two test runs on one machine (developers running suites side by side) do not take each other's
# messages. Database 0 is left alone, and 12 and 13 are the benchmarks' (bench/stack.py,
# bench/b6_profile.py): a test run used to flush them under a running benchmark's workers.
REDIS_TEST_DB = os.getpid() % 11 + 1
TABLES = ("artifacts", "job_metrics", "job_events", "jobs", "files", "api_keys", "tenants", "workers")

API_KEY = "kd_test_" + "k" * 40
S3_CREDENTIALS = {"KD_S3_ACCESS_KEY_ID": "testing", "KD_S3_SECRET_ACCESS_KEY": "testing",
                  "KD_S3_REGION": "us-east-1", "KD_S3_ADDRESSING_STYLE": "path"}


def upload(client, path, purpose, headers=None):
    with open(path, "rb") as f:
        return client.post("/v1/files", files={"file": (path.name, f)}, data={"purpose": purpose},
                           headers=headers)


def problem(resp, status: int) -> dict:
    """Assert an RFC 9457 problem response and return its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in resp.text
    return body


def s3_client(endpoint_url: str):
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing")


def submit(client, teacher, **hyper) -> dict:
    """Upload the (path, arch) teacher and submit a standardized digits job with it (3 epochs unless
    `hyper` says otherwise); the created job."""
    path, arch = teacher
    tid = upload(client, path, "teacher").json()["id"]
    body = digits_job(tid, arch=arch, dataset={"builtin": "digits", "standardize": True},
                      hyperparameters={"epochs": 3, "learning_rate": 0.01, **hyper})
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_for(client, job_id, predicate, timeout=180, worker=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} stuck: {job}\n{worker.output()[-3000:] if worker else ''}")


def settings_for(env: dict[str, str], **kwargs) -> Settings:
    return Settings(**{k.removeprefix("KD_").lower(): v for k, v in env.items()}, **kwargs)


def leftovers(store) -> list[str]:
    """Every object the store holds, temporary ones included (for S3: every object in the bucket
    and every multipart upload not completed or aborted)."""
    if isinstance(store, LocalArtifactStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)
    names = [item["Key"].removeprefix(store.prefix + "/") for page in pages for item in page.get("Contents", [])]
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(names + [f"upload:{u['Key']}" for u in uploads])


def assert_same_weights(got: dict, want: dict) -> None:
    """Two state dicts with the same keys and bit-identical tensors."""
    import torch

    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def wait_for_checkpoint(svc, job_id: str, epoch: int) -> None:
    """Until the job (run by tests/reliability's `svc`) has checkpointed `epoch` or a later one."""
    svc.wait_for_event(job_id, lambda e: e["type"] == "checkpoint" and e["data"]["epoch"] >= epoch,
                       what=f"checkpoint of epoch {epoch}")


def record_body_reads(monkeypatch) -> list:
    """Make POST /v1/files note each time it starts reading a body; the list it appends to."""
    from api.routes import files as files_route

    reads: list = []
    original = files_route.receive_upload

    async def recording_receive_upload(*args, **kwargs):
        reads.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(files_route, "receive_upload", recording_receive_upload)
    return reads


@contextlib.contextmanager
def tenant_row_locked(client, db_url: str):
    """While inside, another session holds the API key's tenant row (SELECT ... FOR UPDATE), as a
    stuck request would; released (rolled back) on the way out."""
    from sqlalchemy import select

    from jobs import api_keys
    from jobs.db import make_engine
    from jobs.tables import Tenant

    with client.app.state.sessionmaker() as session:
        tenant_id = api_keys.authenticate(session, plain_key=API_KEY).id
    holder = make_engine(db_url)
    try:
        with holder.connect() as conn:
            conn.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
            yield
            conn.rollback()
    finally:
        holder.dispose()


def psycopg_statements(monkeypatch) -> list[str]:
    """Every statement and transaction command psycopg sends from here on (pool pings included), from a
    worker thread or from the event loop (the API's AsyncReader)."""
    import psycopg

    sent: list[str] = []

    def text(query) -> str:
        return bytes(query).decode()[:60] if isinstance(query, (bytes, bytearray)) else str(query)[:60]

    def counted(cls, name):
        real = getattr(cls, name)

        def sync(self, query, *args, **kwargs):
            sent.append(text(query))
            return real(self, query, *args, **kwargs)

        async def coro(self, query, *args, **kwargs):
            sent.append(text(query))
            return await real(self, query, *args, **kwargs)

        monkeypatch.setattr(cls, name, coro if cls.__name__.startswith("Async") else sync)

    for cls in (psycopg.Cursor, psycopg.AsyncCursor):
        counted(cls, "execute")
    for cls in (psycopg.Connection, psycopg.AsyncConnection):
        counted(cls, "_exec_command")
    return sent
