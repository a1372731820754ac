"""The embedded mode (SQLite database, kombu's SQLAlchemy broker transport) starts a submitted job
promptly: a real worker process picks each job up well within half a second, where kombu's default
poll of the broker once a second made every job wait about a second (bench/RESULTS.md, B5)."""

from __future__ import annotations

import statistics
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.migrate import upgrade
from jobs.settings import Settings
from harness.services import service_env, start_worker
from tests.factories import digits_job, mlp
from tests.utils import API_KEY, upload

pytestmark = pytest.mark.slow
JOBS = 5


def test_a_job_starts_within_half_a_second_on_the_sqlite_broker(tmp_path, digits_teacher):
    data = tmp_path / "data"
    data.mkdir()
    db, broker = f"sqlite:///{data}/kd.sqlite3", f"sqla+sqlite:///{data}/broker.sqlite3"
    upgrade(db)
    worker = start_worker(service_env(database_url=db, broker_url=broker, data_dir=data, api_key=API_KEY),
                          tmp_path / "worker.log")
    try:
        settings = Settings(database_url=db, broker_url=broker, data_dir=data, bootstrap_api_key=API_KEY)
        with TestClient(create_app(settings)) as client:
            client.headers["Authorization"] = f"Bearer {API_KEY}"
            teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
            body = digits_job(teacher, arch=digits_teacher[1], student=mlp(8), hyperparameters={"epochs": 1},
                              baseline=False)
            waits = []
            for _ in range(JOBS):  # one at a time, each submitted as the worker goes back to the queue
                submitted = time.monotonic()
                job = client.post("/v1/jobs", json=body)
                assert job.status_code == 201, job.text
                started = None
                deadline = submitted + 120
                while time.monotonic() < deadline:
                    status = client.get(f"/v1/jobs/{job.json()['id']}").json()["status"]
                    if started is None and status != "queued":
                        started = time.monotonic() - submitted
                    if status in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.02)
                assert status == "succeeded", worker.output()[-3000:]
                waits.append(started)
    finally:
        worker.stop()
    assert statistics.median(waits) < 0.5, waits
