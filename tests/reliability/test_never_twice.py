"""R3 Never twice at once: a worker that lost its lease (here: frozen with SIGSTOP until the lease
ran out and another worker re-claimed the job) writes nothing more once it wakes, and stops.

The duplicate-delivery flavour (the same message sent twice) is
tests/worker/test_worker_process.py::test_a_duplicate_delivery_trains_nothing; the Redis redelivery
flavour (a running job's unacknowledged message delivered again after KD_BROKER_VISIBILITY_TIMEOUT)
is staged here with a 2 s timeout.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from sqlalchemy import select

from jobs.artifact_store.base import TEMP_PREFIX
from jobs.tables import Job, JobEvent, JobMetric
from tests.reliability.checks import assert_each_epoch_reported_once

pytestmark = pytest.mark.slow
EPOCHS = 12
RECEIVED = re.compile(r"Task \S+\[([0-9a-f-]+)\] received")


def _snapshot(svc, job_id: str) -> dict:
    """Everything a worker could write about the job: row, events, metrics, checkpoint files."""
    with svc.sessions() as s:
        job = s.get(Job, job_id)
        row = (job.status, job.attempt, job.progress, job.result, job.worker, job.lease_until, job.updated_at)
        events = s.execute(select(JobEvent.seq, JobEvent.attempt, JobEvent.type)
                           .where(JobEvent.job_id == job_id)).all()
        metrics = s.execute(select(JobMetric.id, JobMetric.run, JobMetric.epoch, JobMetric.created_at)
                            .where(JobMetric.job_id == job_id)).all()
    directory = svc.settings.artifacts_path / "jobs" / job_id / "checkpoints"
    # The objects, not the temporary file of a write in progress: a worker stopped inside a checkpoint's
    # upload finishes writing that file when it wakes, then its lease check refuses the rename and the
    # file is removed (worker/runner.py, _hold_lease).
    files = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")
             if p.is_file() and not p.name.startswith(TEMP_PREFIX)}
    return {"row": row, "events": events, "metrics": metrics, "files": files}


def test_a_worker_that_lost_its_lease_writes_nothing_more_and_stops(service, digits_teacher):
    svc = service(KD_LEASE_SECONDS="5")
    workers = svc.start_workers("one", "two")
    job = svc.submit(digits_teacher, epochs=EPOCHS)
    job_id = job["id"]
    svc.wait_for_event(job_id, lambda e: e["type"] == "checkpoint", what="checkpoint")
    stale = svc.owner(job_id)
    (successor,) = [w for w in workers if w is not stale]

    svc.freeze(stale)  # a stalled process: no heartbeat, no step
    svc.wait_for_event(job_id, lambda e: e["type"] == "resumed" and e["attempt"] == 2, timeout=30,
                       what="re-claim and resume")
    assert svc.owner(job_id) is successor

    # Wake the stale worker while the new owner is held still (well inside its lease), so that any
    # write in that window could only come from the stale one.
    svc.freeze(successor)
    try:
        before = _snapshot(svc, job_id)
        svc.thaw(stale)
        stale.wait_for_output("lost its lease", timeout=3.5)
        after = _snapshot(svc, job_id)
    finally:
        svc.thaw(successor)
    assert after == before
    assert stale.popen.poll() is None  # it stopped the job, not itself: it takes the next one

    job = svc.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=60, what="end")
    assert job["status"] == "succeeded" and job["attempt"] == 2, job
    assert job["result"]["student"]["accuracy"] > 0.5
    events = svc.events(job_id)
    took_over_at = datetime.fromisoformat(next(e for e in events if e["attempt"] == 2)["created_at"])
    assert all(datetime.fromisoformat(e["created_at"]) < took_over_at for e in events if e["attempt"] == 1)
    assert [e["attempt"] for e in events if e["type"] in ("result", "status")][-2:] == [2, 2]
    assert_each_epoch_reported_once(svc, job_id, runs=("student",), epochs=EPOCHS)
    assert "job %s attempt 1 lost its lease" % job_id in stale.output()


def test_a_message_redelivered_after_the_visibility_timeout_trains_nothing(service, digits_teacher):
    # Late acks keep the running job's message unacknowledged; after 2 s the idle worker's sweep
    # (every second at this timeout, worker/celery_app.py) puts it back on the queue and takes it.
    svc = service(KD_BROKER_VISIBILITY_TIMEOUT="2")
    workers = svc.start_workers("one", "two")
    epochs = 45  # ~10 s: long enough for the redelivery (~2-3 s after the claim) to arrive while it runs
    job_id = svc.submit(digits_teacher, epochs=epochs)["id"]
    svc.wait_for(job_id, lambda j: j["status"] == "running", timeout=30, what="claim")
    owner = svc.owner(job_id)
    (other,) = [w for w in workers if w is not owner]

    other.wait_for_output(f"job {job_id}: not claimed", timeout=20)
    assert svc.job(job_id)["status"] == "running"  # dropped while the first delivery still ran

    job = svc.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=60, what="end")
    assert job["status"] == "succeeded" and job["attempt"] == 1, job
    claims = [e for e in svc.events(job_id) if e["type"] == "claimed"]
    assert len(claims) == 1, claims
    assert_each_epoch_reported_once(svc, job_id, runs=("student",), epochs=epochs)
    assert "not claimed" not in owner.output()
    # the same message (one Celery task id) was received by both workers: a redelivery, not a
    # second message from the reaper
    assert set(RECEIVED.findall(owner.output())) & set(RECEIVED.findall(other.output())), svc.worker_logs()
