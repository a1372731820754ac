"""R12 A job's webhook event outlives the worker that ran the job: it was written with the job's final
status (the outbox), so a worker killed after that commit, while the receiver was still down, loses
nothing; the next worker to start sends it (issue 15)."""

from __future__ import annotations

import json
import time

import pytest

from harness.services import free_port
from tests.webhook_receiver import Receiver, verify

pytestmark = pytest.mark.slow

WEBHOOKS = {"KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "KD_WEBHOOK_POLL_SECONDS": "0.2",
            "KD_WEBHOOK_RETRY_BASE_SECONDS": "0.3", "KD_WEBHOOK_RETRY_MAX_SECONDS": "1", "KD_WEBHOOK_MAX_ATTEMPTS": "50",
            # were the first worker killed during an attempt, its claim would hold the delivery for
            # 4 x this + 30 s (worker/webhook_sender.py CLAIM_TIMEOUTS, webhooks_repo.CLAIM_MARGIN_SECONDS)
            "KD_WEBHOOK_TIMEOUT_SECONDS": "1"}


def deliveries(svc, webhook_id: str) -> list[dict]:
    return svc.client.get(f"/v1/webhooks/{webhook_id}/deliveries").json()["data"]


def wait(predicate, what: str, svc, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout}s\n{svc.worker_logs()}")
        time.sleep(0.1)
    return found


def test_an_event_whose_worker_was_killed_is_sent_by_the_next_worker(service, digits_teacher):
    svc = service(**WEBHOOKS)
    # the API process allows 127.0.0.1 too (the operator setting, as the workers' environment has it)
    svc.client.app.state.settings = svc.settings.model_copy(update={"webhook_allow_private_networks": True})
    port = free_port()  # nothing listens there yet: the receiver is down
    hook = svc.client.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/events"}).json()

    first = svc.start_worker("first")
    job = svc.submit(digits_teacher, epochs=2)
    svc.wait_for(job["id"], lambda j: j["status"] == "succeeded", what="success")
    wait(lambda: [d for d in deliveries(svc, hook["id"]) if d["attempt_count"] >= 2], "failed attempts", svc)
    svc.kill(first)  # the worker that ran the job and was sending its event dies

    receiver = Receiver(port=port)  # the receiver comes up, with no worker left to send
    try:
        time.sleep(1)
        assert receiver.requests == []
        svc.start_worker("second")
        [got] = receiver.wait_for(1, timeout=90)
        verify(hook["secret"], got.headers["kd-signature"], got.body)
        event = json.loads(got.body)
        assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == job["id"]
        [done] = wait(lambda: [d for d in deliveries(svc, hook["id"]) if d["status"] == "succeeded"], "success", svc)
        assert done["event_id"] == event["id"] and done["attempts"][-1]["status_code"] == 204
        assert all(a["status_code"] is None for a in done["attempts"][:-1])  # the first worker's, all kept
        time.sleep(1)
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
