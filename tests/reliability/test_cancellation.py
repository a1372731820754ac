"""R5 Cancellation of a running job, beyond tests/worker (which checks it stops and keeps its
checkpoint): it stops at a step boundary without reporting more epochs, and the worker that ran it
goes on to the next job."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from kdcore.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow


def test_a_cancelled_running_job_stops_and_its_worker_takes_the_next_job(service, digits_teacher):
    svc = service()
    worker = svc.start_worker("only")
    long = svc.submit(digits_teacher, epochs=500)
    following = svc.submit(digits_teacher, epochs=2)
    svc.wait_for_event(long["id"], lambda e: e["type"] == "checkpoint", what="checkpoint")
    assert svc.job(following["id"])["status"] == "queued"
    # Between its writes the running job holds no transaction open: one would keep the job row (or
    # the tables it read) locked for as long as the worker runs, or is stalled.
    started = datetime.fromisoformat(svc.job(long["id"])["started_at"])
    time.sleep(max(0.0, 2.0 - (datetime.now(timezone.utc) - started).total_seconds()))
    assert svc.open_transactions(worker, older_than=1.0) == 0

    resp = svc.client.post(f"/v1/jobs/{long['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] in ("cancelling", "cancelled")
    long = svc.wait_for(long["id"], lambda j: j["status"] == "cancelled", timeout=15, what="cancelled")
    assert long["attempt"] == 1 and long["error"] is None and long["result"] is None

    events = svc.events(long["id"])
    stopped = [i for i, e in enumerate(events) if e["type"] == "stopped"]
    assert len(stopped) == 1
    assert [e["type"] for e in events[stopped[0]:]] == ["stopped", "status"]  # nothing trained after
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "epoch"]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 500
    kept = list_checkpoints(svc.settings.artifacts_path / "jobs" / long["id"] / "checkpoints" / "student")
    assert kept and int(kept[-1].stem.split("-")[1]) in (epochs[-1], epochs[-1] - 1)

    following = svc.wait_for(following["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=60,
                             what="end")
    assert following["status"] == "succeeded", following
    assert svc.owner(following["id"]) is worker
