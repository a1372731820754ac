"""Routing at submission (no worker runs here): `resources` are resolved and checked (422 naming
the field, nothing stored), each job is published to the queue its resources name, and a queued
job reports its queue, its position on it and, while no live worker serves that queue, why it waits."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from sqlalchemy import func, select

from jobs import workers_repo
from jobs.tables import Job
from harness.services import REDIS_SERVER
from tests.factories import digits_job
from tests.utils import REDIS_TEST_DB, problem


def queued_ids(queue: str) -> list[str]:
    r = redis.Redis.from_url(f"{REDIS_SERVER}/{REDIS_TEST_DB}")
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in r.lrange(queue, 0, -1)]


def test_resources_default_to_one_cpu_process_and_are_echoed(client, teacher_id):
    job = client.post("/v1/jobs", json=digits_job(teacher_id)).json()
    assert job["spec"]["resources"] == {"device": "cpu", "gpus": 0, "processes": 1}
    assert job["queue"] == "kd.cpu" and queued_ids("kd.cpu") == [job["id"]]


@pytest.mark.parametrize("resources, queue", [
    ({"device": "cuda"}, "kd.cuda.1"), ({"device": "cuda", "gpus": 2}, "kd.cuda.2"),
    ({"device": "cpu", "processes": 2}, "kd.cpu"),
])
def test_each_job_goes_to_the_queue_its_resources_name(client, teacher_id, resources, queue):
    job = client.post("/v1/jobs", json=digits_job(teacher_id, resources=resources)).json()
    assert job["queue"] == queue and queued_ids(queue) == [job["id"]]


@pytest.mark.parametrize("resources, field", [
    ({"device": "tpu"}, "resources.device"),
    ({"device": "cuda", "gpus": 9}, "resources.gpus"),
    ({"device": "cuda", "gpus": 0}, "resources.gpus"),
    ({"gpus": 1}, "resources.gpus"),
    ({"device": "cuda", "gpus": 2, "processes": 3}, "resources.processes"),
    ({"processes": 9}, "resources.processes"),
    ({"processes": "two"}, "resources.processes"),
    ({"nodes": 2}, "resources.nodes"),
])
def test_bad_resources_are_422_naming_the_field_and_store_nothing(client, teacher_id, resources, field):
    body = problem(client.post("/v1/jobs", json=digits_job(teacher_id, resources=resources)), 422)
    assert field in json.dumps(body["errors"] if "errors" in body else body)
    with client.app.state.sessionmaker() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    assert queued_ids("kd.cpu") == [] and queued_ids("kd.cuda.1") == []


def test_queued_jobs_report_their_position_and_why_they_wait(client, teacher_id):
    cpu = [client.post("/v1/jobs", json=digits_job(teacher_id)).json()["id"] for _ in range(3)]
    gpu = client.post("/v1/jobs", json=digits_job(teacher_id, resources={"device": "cuda", "gpus": 2})).json()["id"]
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in cpu]
    assert [j["queue_position"] for j in jobs] == [0, 1, 2]
    assert all(j["waiting_reason"].startswith("no live worker serves device=cpu gpus=0 (queue kd.cpu)")
               for j in jobs)
    gpu_job = client.get(f"/v1/jobs/{gpu}").json()
    assert gpu_job["queue_position"] == 0 and "device=cuda gpus=2" in gpu_job["waiting_reason"]

    with client.app.state.sessionmaker() as s:  # a CPU worker comes up
        workers_repo.register(s, name="cpu@test", hostname="test", pid=1, queues=["kd.cpu"], device="cpu", gpus=0)
        s.commit()
    assert client.get(f"/v1/jobs/{cpu[0]}").json()["waiting_reason"] is None
    assert "kd.cuda.2" in client.get(f"/v1/jobs/{gpu}").json()["waiting_reason"]
    client.post(f"/v1/jobs/{cpu[0]}/cancel")
    after = client.get(f"/v1/jobs/{cpu[0]}").json()
    assert after["status"] == "cancelled" and after["queue_position"] is None and after["waiting_reason"] is None
    assert [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in cpu[1:]] == [0, 1]
