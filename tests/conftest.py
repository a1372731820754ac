"""Fixtures shared by the service tests (tests/api, tests/worker, tests/e2e): real PostgreSQL and
Redis (running on the dev and CI machines; .ci/run starts them), real worker processes. Plain
helpers and constants are in tests/utils.py; this file holds fixtures only."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
from sqlalchemy import text

from fastapi.testclient import TestClient

from api.app import create_app
from jobs import api_keys
from jobs.db import make_engine
from jobs.migrate import upgrade
from jobs.settings import Settings
from tests.utils import (API_KEY, PG_SERVER, REDIS_SERVER, REDIS_TEST_DB, S3_CREDENTIALS, TABLES, Proc, s3_client,
                         service_env, start_worker)

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


# --- a real S3 protocol server (moto's standalone server) for the S3 artifact store ---------------

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
