"""Fixtures shared by the service tests (tests/api, tests/worker, tests/e2e): real PostgreSQL and
Redis (running on the dev and CI machines; .ci/run starts them), real worker processes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis
from sqlalchemy import text

from fastapi.testclient import TestClient

from api.app import create_app
from jobs import api_keys
from jobs.db import make_engine
from jobs.migrate import upgrade
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_SERVER = "redis://127.0.0.1:6379"
# The Redis database this test run flushes and uses as its broker: one of 1..15 per pytest process,
# so two test runs on one machine (developers running suites side by side) do not take each other's
# messages. Database 0 is left alone.
REDIS_TEST_DB = os.getpid() % 15 + 1
TABLES = ("artifacts", "job_metrics", "job_events", "jobs", "files", "api_keys", "tenants", "workers")


@pytest.fixture(scope="session")
def service_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the service tests, migrated with Alembic; dropped after."""
    admin = make_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    name = f"kd_svc_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_SERVER}/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def clean_pg(service_pg_url) -> str:
    """The service database with every table emptied before the test."""
    engine = make_engine(service_pg_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return service_pg_url


@pytest.fixture
def redis_url() -> str:
    """A Redis database emptied before the test (the broker of the production stack)."""
    url = f"{REDIS_SERVER}/{REDIS_TEST_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


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


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> tuple[Path, dict]:
    """A small MLP teacher trained on the builtin digits split, saved as a safetensors state dict."""
    import torch
    from safetensors.torch import save_file

    from kdcore.data import load_builtin
    from kdcore.models import build_model

    torch.manual_seed(0)
    train = load_builtin("digits")["train"]
    params = {"hidden_sizes": [128]}
    model = build_model("mlp", params, input_shape=(64,), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):  # full-batch Adam: a 97 %-ish teacher in about a second
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, {"arch": "mlp", "arch_params": params}


# --- the API in-process (FastAPI TestClient) on the real PostgreSQL and Redis ---------------------

API_KEY = "kd_test_" + "k" * 40


@pytest.fixture
def settings(clean_pg, redis_url, tmp_path) -> Settings:
    return Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data",
                    bootstrap_api_key=API_KEY, max_upload_bytes=2 * 1024 * 1024)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {API_KEY}"
        yield c


@pytest.fixture
def other_tenant_headers(client) -> dict[str, str]:
    """Headers with a key of a second tenant."""
    with client.app.state.sessionmaker() as session:
        key, _ = api_keys.create_key(session, tenant_name="other")
        session.commit()
    return {"Authorization": f"Bearer {key}"}


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


# --- a real S3 protocol server (moto's standalone server) for the S3 artifact store ---------------

S3_CREDENTIALS = {"KD_S3_ACCESS_KEY_ID": "testing", "KD_S3_SECRET_ACCESS_KEY": "testing",
                  "KD_S3_REGION": "us-east-1", "KD_S3_ADDRESSING_STYLE": "path"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """`python -m moto.server` on a free 127.0.0.1 port for this test session; its endpoint URL.
    It speaks the S3 protocol over HTTP (multipart, Range, copy, metadata), in memory."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_", "AWS_"))}
    proc = Proc([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.popen.poll() is not None:
                raise RuntimeError(f"moto server did not start:\n{proc.output()}")
            time.sleep(0.2)
    yield url
    proc.stop()


def s3_client(endpoint_url: str):
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing")


@pytest.fixture
def s3_env(s3_server) -> dict[str, str]:
    """KD_ settings of an S3 store in a fresh bucket of its own on the moto server."""
    bucket = f"kd-test-{secrets.token_hex(6)}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    return {"KD_ARTIFACT_URL": f"s3://{bucket}/kd", "KD_S3_ENDPOINT_URL": s3_server, **S3_CREDENTIALS}
