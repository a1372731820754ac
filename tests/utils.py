"""Helpers and constants the test modules share: plain functions, no fixtures (those live in the
conftest.py files). Service subprocesses (`Proc`, `service_env`, `start_worker`, `wait_healthy`),
request helpers (`upload`, `problem`), job helpers (`spec`, `submit`, `wait_for`), store helpers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jobs.artifact_store import LocalArtifactStore
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_SERVER = "redis://127.0.0.1:6379"
# The Redis database this test run flushes and uses as its broker: one of 1..15 per pytest process,
# so two test runs on one machine (developers running suites side by side) do not take each other's
# messages. Database 0 is left alone.
REDIS_TEST_DB = os.getpid() % 15 + 1
TABLES = ("artifacts", "job_metrics", "job_events", "jobs", "files", "api_keys", "tenants", "workers")

API_KEY = "kd_test_" + "k" * 40
S3_CREDENTIALS = {"KD_S3_ACCESS_KEY_ID": "testing", "KD_S3_SECRET_ACCESS_KEY": "testing",
                  "KD_S3_REGION": "us-east-1", "KD_S3_ADDRESSING_STYLE": "path"}


def service_env(*, database_url: str, broker_url: str, data_dir: Path, api_key: str, **extra: str) -> dict:
    """Environment for an API or worker subprocess: the machine's, plus KD_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    # One thread per worker process (2 cores, several processes); `extra` may override it.
    env.update({"KD_DATABASE_URL": database_url, "KD_BROKER_URL": broker_url, "KD_DATA_DIR": str(data_dir),
                "KD_BOOTSTRAP_API_KEY": api_key, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra})
    return env


def wait_healthy(base_url: str, api: "Proc", *, timeout: float = 60) -> None:
    """Return once the API at `base_url` answers /healthz 200; RuntimeError with its log if it exits or
    does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or api.popen.poll() is not None:
            raise RuntimeError(api.output())
        time.sleep(0.2)


class Proc:
    """A service subprocess whose output goes to a log file (read on failure)."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited with {self.popen.returncode}:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"no {needle!r} after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, sig_timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=sig_timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


def start_worker(env: dict, log_path: Path) -> Proc:
    proc = Proc([sys.executable, "-m", "worker"], env, log_path)
    proc.wait_for_output("ready.", timeout=90)
    return proc


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit(client, teacher, **hyper) -> dict:
    path, arch = teacher
    tid = upload(client, path, "teacher").json()["id"]
    body = {"teacher": {"file_id": tid, **arch}, "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
            "dataset": {"builtin": "digits", "standardize": True},
            "hyperparameters": {"epochs": 3, "learning_rate": 0.01, **hyper}}
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


def spec(teacher_id: str, **overrides) -> dict:
    """A small digits job body for POST /v1/jobs; overrides by dotted name ("hyperparameters.epochs")."""
    body = {"teacher": {"file_id": teacher_id, "arch": "mlp", "arch_params": {"hidden_sizes": [128]}},
            "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
            "dataset": {"builtin": "digits"},
            "hyperparameters": {"epochs": 2}}
    for dotted, value in overrides.items():
        head, _, tail = dotted.partition(".")
        if tail:
            body.setdefault(head, {})[tail] = value
        else:
            body[head] = value
    return body


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
