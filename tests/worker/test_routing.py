"""Queues and routing with real worker processes on PostgreSQL and Redis: a worker advertises what
it serves; a cuda job with only a CPU worker stays queued and says why; a cpu job (here the
data-parallel path: two gloo processes launched by the worker) runs on the CPU worker; a worker
told to serve a queue its machine cannot serve refuses to start."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from sqlalchemy import select

from jobs.db import make_engine, make_sessionmaker
from jobs.tables import Worker
from harness.services import ROOT, service_env, start_worker
from tests.factories import digits_job
from tests.utils import API_KEY, wait_for

pytestmark = pytest.mark.slow


def env_for(settings, **extra):
    return service_env(database_url=settings.db_url, broker_url=settings.celery_broker_url,
                       data_dir=settings.data_dir, api_key=API_KEY, KD_HEARTBEAT_SECONDS="0.5",
                       KD_LEASE_SECONDS="10", KD_REAPER_INTERVAL="2", KD_WORKER_HEARTBEAT_SECONDS="1",
                       KD_WORKER_STALE_SECONDS="5", **extra)


def workers(settings) -> list[Worker]:
    engine = make_engine(settings.db_url)
    try:
        with make_sessionmaker(engine)() as s:
            return list(s.scalars(select(Worker)))
    finally:
        engine.dispose()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (the worker must be CPU-only)")
def test_a_cuda_job_waits_with_a_reason_while_a_cpu_job_runs_on_the_cpu_worker(client, settings, tmp_path,
                                                                               digits_teacher):
    worker = start_worker(env_for(settings), tmp_path / "worker.log")
    try:
        [row] = workers(settings)
        assert (row.device, row.gpus, row.queues) == ("cpu", 0, ["kd.cpu"])

        gpu_job = client.post("/v1/jobs", json={**_body(client, digits_teacher),
                                                 "resources": {"device": "cuda", "gpus": 2}}).json()
        cpu_job = client.post("/v1/jobs", json={**_body(client, digits_teacher),
                                                 "resources": {"device": "cpu", "processes": 2}}).json()
        assert (gpu_job["queue"], cpu_job["queue"]) == ("kd.cuda.2", "kd.cpu")

        done = wait_for(client, cpu_job["id"], lambda j: j["status"] in ("succeeded", "failed"), worker=worker)
        assert done["status"] == "succeeded", done
        assert done["spec"]["resources"] == {"device": "cpu", "gpus": 0, "processes": 2}
        metrics = client.get(f"/v1/jobs/{cpu_job['id']}/metrics").json()["data"]
        assert sorted((m["run"], m["epoch"]) for m in metrics) == [("baseline", 1), ("baseline", 2),
                                                                    ("student", 1), ("student", 2)]

        waiting = client.get(f"/v1/jobs/{gpu_job['id']}").json()
        assert waiting["status"] == "queued" and waiting["attempt"] == 0
        assert waiting["waiting_reason"].startswith("no live worker serves device=cuda gpus=2 (queue kd.cuda.2)")
        assert "not claimed" not in worker.output()  # the CPU worker never even received it
    finally:
        worker.stop()
    assert workers(settings) == []  # a clean stop removes the worker's row


def _body(client, teacher) -> dict:
    from tests.utils import upload

    path, arch = teacher
    tid = upload(client, path, "teacher").json()["id"]
    return digits_job(tid, arch=arch, dataset={"builtin": "digits", "standardize": True},
                      hyperparameters={"learning_rate": 0.01})


def test_a_killed_worker_stops_counting_as_live(client, settings, tmp_path, digits_teacher):
    # the API judges liveness with the same 5 s as the worker's environment above
    client.app.state.settings = settings.model_copy(update={"worker_heartbeat_seconds": 1,
                                                            "worker_stale_seconds": 5})
    worker = start_worker(env_for(settings), tmp_path / "worker.log")
    try:
        worker.popen.kill()  # no clean stop: the row stays, and goes stale
        worker.popen.wait()
        assert len(workers(settings)) == 1
        job = client.post("/v1/jobs", json=_body(client, digits_teacher)).json()
        deadline = time.monotonic() + 15
        while (reason := client.get(f"/v1/jobs/{job['id']}").json()["waiting_reason"]) is None:
            assert time.monotonic() < deadline, "the dead worker still counts as live"
            time.sleep(0.5)
        assert reason.startswith("no live worker serves device=cpu gpus=0 (queue kd.cpu)")
    finally:
        worker.stop()


def test_a_worker_refuses_queues_its_machine_cannot_serve(settings):
    done = subprocess.run([sys.executable, "-m", "worker"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=env_for(settings, KD_WORKER_QUEUES="kd.cpu,kd.cuda.8"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "KD_WORKER_QUEUES names kd.cuda.8, which this machine cannot serve" in done.stderr
    assert workers(settings) == []
