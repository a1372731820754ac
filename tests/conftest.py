"""Fixtures shared by the service tests (tests/api, tests/worker, tests/e2e): real PostgreSQL and
Redis (running on the dev and CI machines; .ci/run starts them), real worker processes. Plain
helpers and constants are in tests/utils.py; this file holds fixtures only."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from sqlalchemy import text

from fastapi.testclient import TestClient

from api.app import create_app
from jobs import api_keys
from jobs.db import make_engine
from harness.services import (REDIS_SERVER, Proc, Stack, answers, free_port, fresh_database, service_env,
                              start_worker, wait_until)
from harness.teachers import digits_teacher_file
from jobs.settings import Settings
from tests.utils import API_KEY, REDIS_TEST_DB, S3_CREDENTIALS, TABLES, s3_client

@pytest.fixture(scope="session")
def service_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the service tests, migrated with Alembic; dropped after."""
    with fresh_database("kd_svc") as url:
        yield url


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


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> tuple[Path, dict]:
    """A small MLP teacher ([128], 60 full-batch Adam steps: 97 %-ish in about a second) trained on the
    builtin digits split, saved as a safetensors state dict; (path, the job's teacher arch fields)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    return path, digits_teacher_file(path, [128], steps=60)


# --- the API in-process (FastAPI TestClient) on the real PostgreSQL and Redis ---------------------

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


@pytest.fixture
def revoked_key(client) -> str:
    """A key of another tenant that worked, then was revoked."""
    with client.app.state.sessionmaker() as session:
        key, row = api_keys.create_key(session, tenant_name="gone")
        session.commit()
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        api_keys.revoke_key(session, prefix_or_id=row.id)
        session.commit()
    return key


# --- a real S3 protocol server (moto's standalone server) for the S3 artifact store ---------------

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """`python -m moto.server` on a free 127.0.0.1 port for this test session; its endpoint URL.
    It speaks the S3 protocol over HTTP (multipart, Range, copy, metadata), in memory."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_", "AWS_"))}
    proc = Proc([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/moto-api/", None), what="moto server", proc=proc)
    yield url
    proc.stop()


@pytest.fixture
def s3_env(s3_server) -> dict[str, str]:
    """KD_ settings of an S3 store in a fresh bucket of its own on the moto server."""
    bucket = f"kd-test-{secrets.token_hex(6)}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    return {"KD_ARTIFACT_URL": f"s3://{bucket}/kd", "KD_S3_ENDPOINT_URL": s3_server, **S3_CREDENTIALS}


@pytest.fixture
def worker(settings, tmp_path):
    """A real `python -m worker` on the test's PostgreSQL and Redis, with short heartbeats and leases."""
    env = service_env(database_url=settings.db_url, broker_url=settings.celery_broker_url,
                      data_dir=settings.data_dir, api_key=API_KEY, KD_HEARTBEAT_SECONDS="0.5",
                      KD_LEASE_SECONDS="10", KD_REAPER_INTERVAL="2")
    proc = start_worker(env, tmp_path / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture
def live_stack(request, tmp_path) -> Iterator[Callable[..., Stack]]:
    """live_stack(workers=1, api=True, api_key=API_KEY, database_url=clean_pg, broker_url=redis_url,
    worker_env=None, stop_timeout=15, **KD_env) -> a harness Stack: `python -m api` under uvicorn
    (healthy) and `workers` ready `python -m worker` processes, on the test's PostgreSQL, Redis and
    data directory unless told otherwise; every process is stopped (SIGTERM, then SIGKILL after
    `stop_timeout` seconds) at the end of the test."""
    started: list[Stack] = []

    def start(*, workers: int = 1, api: bool = True, api_key: str = API_KEY, database_url: str | None = None,
              broker_url: str | None = None, worker_env: dict[str, str] | None = None, stop_timeout: float = 15,
              **env: str) -> Stack:
        env = service_env(database_url=database_url or request.getfixturevalue("clean_pg"),
                          broker_url=broker_url or request.getfixturevalue("redis_url"),
                          data_dir=tmp_path / "data", api_key=api_key, **env)
        log_dir = tmp_path / f"stack-{len(started)}"
        log_dir.mkdir()
        started.append(Stack(env, log_dir, api_key=api_key, stop_timeout=stop_timeout))
        return started[-1].run(workers=workers, api=api, worker_env=worker_env)

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty artifact store: the directory one, then the S3 one (moto)."""
    from jobs.artifact_store import LocalArtifactStore, make_store
    from jobs.artifact_store.s3 import MIN_PART_BYTES, S3ArtifactStore
    from tests.utils import settings_for

    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    env = request.getfixturevalue("s3_env")
    made = make_store(settings_for(env, data_dir=tmp_path / "data", s3_part_bytes=MIN_PART_BYTES))
    assert isinstance(made, S3ArtifactStore)
    return made
