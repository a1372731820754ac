"""A teacher graph that never ends cannot hold a worker (issue 16 item 2), on a real worker process
(`python -m worker`) with PostgreSQL and Redis:

- cancelling a job whose ONNX teacher hangs in `caching_teacher` kills the teacher's child and
  ends the job `cancelled` (before: it stayed `cancelling` for good, and other jobs waited);
- a batch past KD_TEACHER_BATCH_TIMEOUT_SECONDS fails the job with a message naming the limit;
- every job has a wall-clock limit (KD_JOB_TIME_LIMIT_SECONDS): past it the job fails with code
  `time_limit`, whether its teacher hangs or its training is simply long."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests import hostile_graphs as g
from harness.services import service_env, start_worker
from tests.factories import digits_job
from tests.utils import API_KEY, upload, wait_for

pytestmark = pytest.mark.slow


def start(settings, tmp_path, **extra):
    env = service_env(database_url=settings.db_url, broker_url=settings.celery_broker_url,
                      data_dir=settings.data_dir, api_key=API_KEY, KD_HEARTBEAT_SECONDS="0.5",
                      KD_LEASE_SECONDS="10", KD_REAPER_INTERVAL="2", **extra)
    return start_worker(env, tmp_path / "worker.log")


def hanging_job(client, tmp_path) -> str:
    teacher = g.save(g.input_dependent_loop(), tmp_path / "teacher.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(300, g.FEATURES)).astype(np.float32),
             y=rng.integers(0, g.CLASSES, 300))
    tid = upload(client, teacher, "teacher").json()["id"]
    did = upload(client, tmp_path / "data.npz", "dataset").json()["id"]
    resp = client.post("/v1/jobs", json={
        "teacher": {"file_id": tid}, "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [8]}},
        "dataset": {"train_file_id": did}, "hyperparameters": {"epochs": 2}})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_cancelling_a_job_whose_teacher_hangs_kills_the_teacher(client, settings, tmp_path):
    worker = start(settings, tmp_path, KD_TEACHER_BATCH_TIMEOUT_SECONDS="600")
    try:
        job_id = hanging_job(client, tmp_path)
        wait_for(client, job_id, lambda j: (j["progress"] or {}).get("phase") == "caching_teacher", 90, worker)
        time.sleep(1)
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        asked = time.monotonic()
        job = wait_for(client, job_id, lambda j: j["status"] in ("cancelled", "failed", "succeeded"), 30, worker)
        assert job["status"] == "cancelled", job
        assert time.monotonic() - asked < 15
        # the worker is free again: the next job is claimed (and hangs in its turn)
        second = hanging_job(client, tmp_path)
        wait_for(client, second, lambda j: j["status"] == "running", 30, worker)
    finally:
        worker.stop()


def test_a_teacher_batch_past_its_limit_fails_the_job_naming_it(client, settings, tmp_path):
    worker = start(settings, tmp_path, KD_TEACHER_BATCH_TIMEOUT_SECONDS="3")
    try:
        job_id = hanging_job(client, tmp_path)
        job = wait_for(client, job_id, lambda j: j["status"] in ("cancelled", "failed", "succeeded"), 60, worker)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "invalid_input"
        assert "took longer than 3 s on a batch" in job["error"]["message"]
        assert job["attempt"] == 1  # failed once, not retried until KD_MAX_ATTEMPTS
    finally:
        worker.stop()


def test_a_job_past_its_wall_clock_limit_fails_with_time_limit(client, settings, tmp_path, digits_teacher):
    worker = start(settings, tmp_path, KD_TEACHER_BATCH_TIMEOUT_SECONDS="600", KD_JOB_TIME_LIMIT_SECONDS="6")
    try:
        hanging = hanging_job(client, tmp_path)
        job = wait_for(client, hanging, lambda j: j["status"] in ("cancelled", "failed", "succeeded"), 60, worker)
        assert job["status"] == "failed" and job["error"]["code"] == "time_limit", job
        assert "KD_JOB_TIME_LIMIT_SECONDS" in job["error"]["message"]
        assert "caching_teacher" in job["error"]["message"]

        # a job that trains for too long stops at a step boundary in the same way
        path, arch = digits_teacher
        tid = upload(client, path, "teacher").json()["id"]
        resp = client.post("/v1/jobs", json=digits_job(tid, arch=arch,
                                                       hyperparameters={"epochs": 500, "batch_size": 8}))
        assert resp.status_code == 201, resp.text
        job = wait_for(client, resp.json()["id"], lambda j: j["status"] in ("cancelled", "failed", "succeeded"),
                       60, worker)
        assert job["status"] == "failed" and job["error"]["code"] == "time_limit", job
        assert "phase training" in job["error"]["message"]
    finally:
        worker.stop()
