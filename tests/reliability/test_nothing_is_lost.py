"""R1 Nothing is lost: the database row is the truth and the broker only wakes workers, so a job
whose message never reached the broker, or was lost with it, still runs to the end."""

from __future__ import annotations

import time

import pytest
import redis

pytestmark = pytest.mark.slow


class DeadEnqueuer:
    """The API process dies between committing the job row and publishing its id."""

    def enqueue_job(self, job_id: str, queue: str = "kd.cpu") -> None:
        raise ConnectionError("the API died before it published the job")

    def ping(self) -> None:
        raise ConnectionError("no broker")


def test_a_job_committed_but_never_enqueued_is_enqueued_by_the_reaper(service, digits_teacher):
    svc = service()
    svc.client.app.state.enqueuer = DeadEnqueuer()
    job = svc.submit(digits_teacher, epochs=2)  # the route logs the failure and answers 201
    assert job["status"] == "queued"
    assert redis.Redis.from_url(svc.settings.celery_broker_url).llen("kd.cpu") == 0  # no message anywhere

    worker = svc.start_worker("only")
    job = svc.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=60, what="end")
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1
    assert f"reaper enqueued 1 job(s) again: {job['id']}" in worker.output()


def test_queued_and_running_jobs_survive_a_broker_restart(service, private_redis, digits_teacher):
    svc = service(broker_url=private_redis.url)
    worker = svc.start_worker("only")
    jobs = [svc.submit(digits_teacher, epochs=12) for _ in range(3)]
    ids = [j["id"] for j in jobs]
    svc.wait_for_event(ids[0], lambda e: e["type"] == "checkpoint", what="checkpoint")
    assert [svc.job(i)["status"] for i in ids] == ["running", "queued", "queued"]

    private_redis.kill()  # no persistence: every message it held is gone, the running job's too
    time.sleep(1)
    private_redis.start()

    for job_id in ids:
        job = svc.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=90, what="end")
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 1  # the running one was never interrupted; the others ran once
    # the queued two ran although their messages died with the broker: the reaper sent them again
    log = worker.output()
    assert "Connection to broker lost" in log  # the worker saw the restart...
    assert worker.popen.poll() is None  # ...and reconnected rather than exiting
