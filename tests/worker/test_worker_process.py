"""A real Celery worker process (`python -m worker`) on PostgreSQL and Redis runs submitted jobs:
success with every artifact and row, cancellation of a running job, and duplicate deliveries."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

from kdcore import load_builtin, load_student
from harness.services import service_env, start_worker
from tests.utils import API_KEY, submit, wait_for

pytestmark = pytest.mark.slow


def test_a_job_runs_to_success_with_every_artifact(client, worker, digits_teacher):
    job = submit(client, digits_teacher)
    job = wait_for(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"), worker=worker)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1 and job["progress"]["fraction"] == 1.0
    result = job["result"]
    assert result["evaluated_on"] == "test"
    assert result["teacher"]["accuracy"] > 0.9
    assert 0.1 < result["student"]["accuracy"] <= 1 and 0 <= result["baseline"]["accuracy"] <= 1
    assert result["distillation_gain"] == pytest.approx(result["student"]["accuracy"] - result["baseline"]["accuracy"])
    assert result["compression"] == pytest.approx(result["teacher"]["parameters"] / result["student"]["parameters"])
    comparison = result["comparison"]  # the paired test of student and baseline on the same test rows
    assert comparison["rows"] == result["num_eval_samples"] and 0 < comparison["p_value"] <= 1
    assert comparison["student_only_right"] - comparison["baseline_only_right"] == round(
        result["distillation_gain"] * result["num_eval_samples"])
    assert result["warnings"] == []

    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    assert sorted((m["run"], m["epoch"]) for m in metrics) == [(r, e) for r in ("baseline", "student") for e in (1, 2, 3)]
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500}).json()["data"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    phases = [e["data"]["phase"] for e in events if e["type"] == "phase"]
    assert phases == ["loading", "caching_teacher", "training", "baseline", "evaluating", "exporting"]
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert {e["level"] for e in events} == {"info"}
    [outcome] = [e for e in events if e["type"] == "result"]
    assert f"{comparison['verdict']}, p = " in outcome["message"]

    student = client.get(f"/v1/jobs/{job['id']}/student")
    assert student.status_code == 200
    assert student.headers["etag"] == f'"{hashlib.sha256(student.content).hexdigest()}"'
    path = worker.log_path.parent / "student.safetensors"
    path.write_bytes(student.content)
    model = load_student(path)  # standardize was on: the loaded student takes the raw inputs
    test = load_builtin("digits")["test"]
    with torch.no_grad():
        acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert acc == pytest.approx(result["student"]["accuracy"])
    onnx = client.get(f"/v1/jobs/{job['id']}/student", params={"format": "onnx"})
    assert onnx.status_code == 200 and onnx.content[:1] == b"\x08"


def test_cancelling_a_running_job_stops_it_and_keeps_its_checkpoint(client, worker, settings, digits_teacher):
    job = submit(client, digits_teacher, epochs=500, batch_size=16)
    wait_for(client, job["id"], lambda j: j["status"] == "running" and (j["progress"]["epoch"] or 0) >= 2,
             worker=worker)
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] in ("cancelling", "cancelled")
    t0 = time.monotonic()
    job = wait_for(client, job["id"], lambda j: j["status"] == "cancelled", timeout=30, worker=worker)
    assert time.monotonic() - t0 < 15
    assert job["finished_at"] is not None
    checkpoints = list((settings.artifacts_path / "jobs" / job["id"] / "checkpoints").rglob("*.kdckpt"))
    assert checkpoints, "the last checkpoint must be kept"
    assert client.get(f"/v1/jobs/{job['id']}/student").status_code == 409


@pytest.fixture
def default_heartbeat_worker(settings, tmp_path):
    """A worker that renews its lease every 5 s, the default KD_HEARTBEAT_SECONDS."""
    env = service_env(database_url=settings.db_url, broker_url=settings.celery_broker_url,
                      data_dir=settings.data_dir, api_key=API_KEY, KD_HEARTBEAT_SECONDS="5",
                      KD_LEASE_SECONDS="60")
    proc = start_worker(env, tmp_path / "worker.log")
    yield proc
    proc.stop()


def test_a_cancel_stops_a_running_job_within_a_second_not_at_the_next_heartbeat(
        client, default_heartbeat_worker, settings, digits_teacher):
    from sqlalchemy import select

    from jobs.db import make_engine
    from jobs.tables import Job

    worker = default_heartbeat_worker
    job = submit(client, digits_teacher, epochs=500, batch_size=16)
    wait_for(client, job["id"], lambda j: j["status"] == "running" and (j["progress"]["epoch"] or 0) >= 1,
             worker=worker)
    engine = make_engine(settings.db_url)
    try:
        def lease_until():
            with engine.connect() as conn:
                return conn.scalar(select(Job.lease_until).where(Job.id == job["id"]))

        # Only a heartbeat moves lease_until: cancel right after one, so the next is ~5 s away and a
        # worker that reads the flag only when it beats cannot stop the job in time.
        before, deadline = lease_until(), time.monotonic() + 15
        while lease_until() == before:
            assert time.monotonic() < deadline, "no heartbeat within 15 s"
            time.sleep(0.05)
    finally:
        engine.dispose()
    t0 = time.monotonic()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    while (status := client.get(f"/v1/jobs/{job['id']}").json()["status"]) != "cancelled":
        assert time.monotonic() - t0 < 10, f"still {status}\n{worker.output()[-3000:]}"
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    assert elapsed < 3, f"cancel -> cancelled took {elapsed:.2f} s"
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 999}).json()["data"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"][-2:] == ["cancelling", "cancelled"]


def test_a_duplicate_delivery_trains_nothing(client, worker, digits_teacher):
    from api.enqueue import Enqueuer

    job = submit(client, digits_teacher, epochs=2)
    Enqueuer(client.app.state.settings.celery_broker_url).enqueue_job(job["id"])  # the same message again
    job = wait_for(client, job["id"], lambda j: j["status"] == "succeeded", worker=worker)
    worker.wait_for_output("not claimed", timeout=60)
    job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["attempt"] == 1
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    assert len(metrics) == 4
    claims = [e for e in client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500}).json()["data"]
              if e["type"] == "claimed"]
    assert len(claims) == 1


def test_a_jobs_lease_owner_is_its_workers_row(client, worker, settings, digits_teacher):
    """One worker name (worker/context.py): what a lease records joins the `workers` table (two
    functions returned two formats before, host:pid and kd-worker-pid@host)."""
    from sqlalchemy import select

    from jobs.db import make_engine
    from jobs.tables import Job, Worker

    job = submit(client, digits_teacher, epochs=1)
    wait_for(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"), worker=worker)
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            owner = conn.scalar(select(Job.worker).where(Job.id == job["id"]))
            names = set(conn.scalars(select(Worker.name)))
    finally:
        engine.dispose()
    assert owner in names and owner.startswith("kd-worker-")
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500}).json()["data"]
    assert any(e["type"] == "claimed" and owner in e["message"] for e in events)
