"""R4 Bounded retries: a job that takes its worker down every time it runs (here: the test
SIGKILLs whichever worker claims it) is not retried forever. After KD_MAX_ATTEMPTS claims it ends
`failed` with the code `max_attempts_exceeded` and a message that says how many attempts ran."""

from __future__ import annotations

import pytest

from tests.reliability.checks import FINISHED

pytestmark = pytest.mark.slow


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(service, digits_teacher):
    svc = service(max_attempts=2, KD_LEASE_SECONDS="2")
    svc.start_workers("one", "two", "three")
    job = svc.submit(digits_teacher, epochs=200)
    assert job["max_attempts"] == 2
    for attempt in (1, 2):
        svc.wait_for_event(job["id"], lambda e: e["type"] == "claimed" and e["attempt"] == attempt,
                           timeout=30, what=f"claim {attempt}")
        svc.kill(svc.owner(job["id"]))

    job = svc.wait_for(job["id"], lambda j: j["status"] in FINISHED, timeout=30, what="end")
    assert job["status"] == "failed", job
    assert job["attempt"] == 2
    assert job["error"]["code"] == "max_attempts_exceeded"
    assert "2 attempts" in job["error"]["message"] and "max_attempts=2" in job["error"]["message"]
    events = svc.events(job["id"])
    assert [e["attempt"] for e in events if e["type"] == "claimed"] == [1, 2]
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "failed"
    assert events[-1]["data"]["error_code"] == "max_attempts_exceeded"
    assert svc.client.get(f"/v1/jobs/{job['id']}/student").status_code == 409
    # the last worker standing saw the job and refused to run it a third time
    (survivor,) = [w for w in svc.workers.values() if w.popen.poll() is None]
    survivor.wait_for_output(f"job {job['id']}: not claimed", timeout=10)
