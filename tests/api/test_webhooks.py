"""Webhooks through the API, delivered by a real `python -m worker` (PostgreSQL, Redis) to a local
receiver on 127.0.0.1, which the operator setting KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS allows here (for the
API in this process and for the worker's environment). Registration, the secret shown once, real job
events signed, a receiver that is down then up, one that always fails, the limits and tenant isolation.
The sender's SSRF rule after DNS resolution is in tests/worker/test_webhook_sender.py."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.webhooks import retry_delay
from harness.services import free_port, service_env, start_worker
from tests.utils import API_KEY, problem, submit, wait_for
from tests.webhook_receiver import Receiver, verify

ALL = ["job.succeeded", "job.failed", "job.cancelled"]
WORKER_WEBHOOK_ENV = {"KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "KD_WEBHOOK_POLL_SECONDS": "0.2",
                      "KD_WEBHOOK_RETRY_BASE_SECONDS": "0.3", "KD_WEBHOOK_RETRY_MAX_SECONDS": "1",
                      "KD_WEBHOOK_MAX_ATTEMPTS": "5", "KD_WEBHOOK_TIMEOUT_SECONDS": "2"}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"webhook_allow_private_networks": True, "webhooks_per_tenant": 3})


@pytest.fixture
def hook_worker(settings, tmp_path):
    env = service_env(database_url=settings.db_url, broker_url=settings.celery_broker_url, data_dir=settings.data_dir,
                      api_key=API_KEY, KD_HEARTBEAT_SECONDS="0.5", KD_LEASE_SECONDS="10", **WORKER_WEBHOOK_ENV)
    proc = start_worker(env, tmp_path / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def register(client, url: str, **body) -> dict:
    resp = client.post("/v1/webhooks", json={"url": url, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def deliveries_until(client, webhook_id: str, predicate, worker, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 100})
        assert page.status_code == 200, page.text
        if predicate(page.json()["data"]):
            return page.json()["data"]
        time.sleep(0.2)
    raise AssertionError(f"deliveries stuck: {page.json()}\n{worker.output()[-3000:]}")


def test_register_shows_the_secret_once_and_lists_gets_and_deletes(client):
    created = register(client, "https://hooks.example/kd", events=["job.failed"])
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["events"] == ["job.failed"] and created["object"] == "webhook"
    assert created["secret"].startswith(created["secret_prefix"])
    everything = register(client, "https://hooks.example/all")
    assert everything["events"] == ALL  # the default
    got = client.get(f"/v1/webhooks/{created['id']}").json()
    assert "secret" not in got and got["secret_prefix"] == created["secret_prefix"]
    listed = client.get("/v1/webhooks").json()
    assert [w["id"] for w in listed["data"]] == [everything["id"], created["id"]] and not listed["has_more"]
    assert all("secret" not in w for w in listed["data"])
    rotated = client.post(f"/v1/webhooks/{created['id']}/rotate-secret", json={"previous_secret_valid_seconds": 600})
    assert rotated.status_code == 200, rotated.text
    rotated = rotated.json()
    assert rotated["secret"] != created["secret"] and rotated["secret"].startswith("whsec_")
    assert rotated["previous_secret_expires_at"] is not None
    got = client.get(f"/v1/webhooks/{created['id']}").json()
    assert "secret" not in got and got["secret_prefix"] == rotated["secret_prefix"]
    assert problem(client.post(f"/v1/webhooks/{created['id']}/rotate-secret",
                               json={"previous_secret_valid_seconds": 10**9}), 422)["errors"][0]["field"] == \
        "previous_secret_valid_seconds"
    assert client.post(f"/v1/webhooks/{created['id']}/rotate-secret").json()["previous_secret_expires_at"] is not None
    assert client.delete(f"/v1/webhooks/{created['id']}").status_code == 204
    problem(client.get(f"/v1/webhooks/{created['id']}"), 404)
    problem(client.get(f"/v1/webhooks/{created['id']}/deliveries"), 404)
    problem(client.delete(f"/v1/webhooks/{created['id']}"), 404)


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:8000/hook", "loopback"),
    ("http://10.0.0.5/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://localhost:9000/", "loopback name"),
    ("http://[::1]/", "loopback"),
    ("ftp://hooks.example/", "scheme"),
    ("https://user:secret@hooks.example/", "credentials"),
    ("https://hooks.example/" + "a" * 2100, "2048"),
])
def test_registration_refuses_bad_and_non_public_urls_without_the_setting(settings, url, reason):
    strict = settings.model_copy(update={"webhook_allow_private_networks": False})
    with TestClient(create_app(strict), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        body = problem(client.post("/v1/webhooks", json={"url": url}), 422)
        assert body["errors"][0]["field"] == "url" and reason in body["detail"], body
        assert client.get("/v1/webhooks").json()["data"] == []


def test_bad_bodies_and_the_per_tenant_limit(client):
    for body, field in [({"url": "https://h.example/", "events": ["job.started"]}, "events.0"),
                        ({"url": "https://h.example/", "events": []}, "events"),
                        ({"url": "https://h.example/", "secret": "mine"}, "secret"),
                        ({"events": ALL}, "url")]:
        assert problem(client.post("/v1/webhooks", json=body), 422)["errors"][0]["field"] == field
    for n in range(3):
        register(client, f"https://hooks.example/{n}")
    body = problem(client.post("/v1/webhooks", json={"url": "https://hooks.example/4"}), 409)
    assert "KD_WEBHOOKS_PER_TENANT" in body["detail"]


def test_pings_past_the_pending_limit_are_429(client, settings):
    hook = register(client, "https://hooks.example/ping")
    for _ in range(settings.webhook_pending_limit):  # no worker sends them: every ping stays pending
        assert client.post(f"/v1/webhooks/{hook['id']}/test").status_code == 202
    refused = client.post(f"/v1/webhooks/{hook['id']}/test")
    body = problem(refused, 429)
    assert refused.headers["retry-after"] == "30" and "KD_WEBHOOK_PENDING_LIMIT" in body["detail"]
    pending = client.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": 100}).json()["data"]
    assert len(pending) == settings.webhook_pending_limit == 20  # the default; the refused one left nothing


def test_another_tenant_cannot_see_use_or_delete_a_webhook(client, other_tenant_headers):
    mine = register(client, "https://hooks.example/mine")
    unknown = "wh_" + "0" * 24
    assert len(unknown) == len(mine["id"])
    for method, path in [("GET", "/v1/webhooks/{}"), ("DELETE", "/v1/webhooks/{}"),
                         ("GET", "/v1/webhooks/{}/deliveries"), ("POST", "/v1/webhooks/{}/test")]:
        theirs = client.request(method, path.format(mine["id"]), headers=other_tenant_headers)
        nobody = client.request(method, path.format(unknown), headers=other_tenant_headers)
        problem(theirs, 404)
        assert theirs.text.replace(mine["id"], "{id}") == nobody.text.replace(unknown, "{id}")
    assert client.get("/v1/webhooks", headers=other_tenant_headers).json()["data"] == []
    assert client.get(f"/v1/webhooks/{mine['id']}").status_code == 200
    assert client.get(f"/v1/webhooks/{mine['id']}/deliveries").json()["data"] == []


@pytest.mark.slow
def test_job_events_reach_the_receiver_signed(client, settings, hook_worker, receiver, digits_teacher):
    hook = register(client, receiver.url("/kd/events"))
    succeeded = submit(client, digits_teacher)
    # a teacher damaged in the store after its upload: the worker's sha256 check fails the job
    failing = submit(client, digits_teacher)
    teacher = settings.artifacts_path / "files"
    damaged = next(p for p in teacher.rglob(failing["spec"]["teacher"]["file_id"]))
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    cancelled = submit(client, digits_teacher)
    client.post(f"/v1/jobs/{cancelled['id']}/cancel")
    for job in (succeeded, failing, cancelled):
        wait_for(client, job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"), worker=hook_worker)

    received = receiver.wait_for(3)
    by_job = {}
    for got in received:
        verify(hook["secret"], got.headers["kd-signature"], got.body)
        event = json.loads(got.body)
        assert got.path == "/kd/events" and got.headers["kd-event-id"] == event["id"]
        assert got.headers["kd-event-type"] == event["type"]
        by_job[event["data"]["job"]["id"]] = event
    assert {job_id: e["type"] for job_id, e in by_job.items()} == {
        succeeded["id"]: "job.succeeded", failing["id"]: "job.failed", cancelled["id"]: "job.cancelled"}
    assert by_job[failing["id"]]["data"]["job"]["error_code"]
    job = client.get(f"/v1/jobs/{succeeded['id']}").json()
    assert by_job[succeeded["id"]]["data"]["job"]["status"] == job["status"] == "succeeded"

    listed = deliveries_until(client, hook["id"], lambda d: len(d) == 3 and all(x["status"] == "succeeded" for x in d),
                              hook_worker)
    for delivery in listed:
        assert delivery["attempt_count"] == 1 and [a["status_code"] for a in delivery["attempts"]] == [204]
        assert delivery["payload"] == by_job[delivery["job_id"]] and delivery["event_id"] == delivery["payload"]["id"]
    time.sleep(1)  # nothing is sent twice
    assert len(receiver.requests) == 3


@pytest.mark.slow
def test_a_receiver_that_is_down_is_retried_with_backoff_until_it_answers(client, hook_worker):
    port = free_port()
    hook = register(client, f"http://127.0.0.1:{port}/hook")
    ping = client.post(f"/v1/webhooks/{hook['id']}/test")
    assert ping.status_code == 202 and ping.json()["status"] == "pending" and ping.json()["event_type"] == "ping"
    [down] = deliveries_until(client, hook["id"], lambda d: d[0]["attempt_count"] >= 2, hook_worker)
    assert down["status"] == "pending" and all("could not post to 127.0.0.1" in a["error"] for a in down["attempts"])
    receiver = Receiver(port=port)  # the receiver comes up
    try:
        [done] = deliveries_until(client, hook["id"], lambda d: d[0]["status"] == "succeeded", hook_worker)
        [got] = receiver.requests
        verify(hook["secret"], got.headers["kd-signature"], got.body)
        assert json.loads(got.body)["data"] == {"webhook_id": hook["id"]}
    finally:
        receiver.close()
    attempts = done["attempts"]
    assert done["attempt_count"] == len(attempts) >= 3 and attempts[-1]["status_code"] == 204
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["status_code"] is None and a["error"] for a in attempts[:-1])
    starts = [datetime.fromisoformat(a["started_at"]) for a in attempts]
    for n in range(1, len(attempts)):  # never before its backoff: 0.3 s, 0.6 s, then 1 s (the cap)
        assert (starts[n] - starts[n - 1]).total_seconds() >= retry_delay(n, base=0.3, cap=1)


@pytest.mark.slow
def test_a_receiver_that_always_fails_is_given_up_after_the_attempt_limit_and_can_be_sent_again(client, hook_worker):
    receiver = Receiver(status=500)
    try:
        hook = register(client, receiver.url())
        client.post(f"/v1/webhooks/{hook['id']}/test")
        [failed] = deliveries_until(client, hook["id"], lambda d: d[0]["status"] == "failed", hook_worker)
        assert failed["attempt_count"] == 5 and failed["next_attempt_at"] is None  # KD_WEBHOOK_MAX_ATTEMPTS
        assert [a["status_code"] for a in failed["attempts"]] == [500] * 5
        assert failed["last_error"] == "the receiver answered 500"
        assert len(receiver.requests) == 5 and len({r.body for r in receiver.requests}) == 1  # the same event
        assert len({r.headers["kd-event-id"] for r in receiver.requests}) == 1
        time.sleep(1.5)
        assert len(receiver.requests) == 5
        assert client.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "failed"}).json()["data"]
        assert client.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "pending"}).json()["data"] == []

        # the receiver is fixed: the tenant sends the event again, as a new delivery with its own attempts
        receiver.status = 204
        retry = client.post(f"/v1/webhooks/{hook['id']}/deliveries/{failed['id']}/retry")
        assert retry.status_code == 202, retry.text
        again = retry.json()
        assert again["id"] != failed["id"] and again["event_id"] == failed["event_id"] and again["status"] == "pending"
        problem(client.post(f"/v1/webhooks/{hook['id']}/deliveries/{again['id']}/retry"), 409)  # still pending
        listed = deliveries_until(client, hook["id"], lambda d: d[0]["status"] == "succeeded", hook_worker)
        assert [d["id"] for d in listed] == [again["id"], failed["id"]] and listed[1]["status"] == "failed"
        assert listed[0]["attempt_count"] == 1 and receiver.requests[-1].body == receiver.requests[0].body
        assert receiver.requests[-1].headers["kd-event-id"] == failed["event_id"]
    finally:
        receiver.close()


@pytest.mark.slow
def test_the_embedded_mode_delivers_job_events_too(tmp_path, digits_teacher, receiver):
    """`make run`'s mode: SQLite database, kombu's SQLite broker, one worker; a job's event is delivered signed."""
    from jobs.migrate import upgrade
    from jobs.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    db, broker = f"sqlite:///{data}/kd.sqlite3", f"sqla+sqlite:///{data}/broker.sqlite3"
    upgrade(db)
    worker = start_worker(service_env(database_url=db, broker_url=broker, data_dir=data, api_key=API_KEY,
                                      **WORKER_WEBHOOK_ENV), tmp_path / "worker.log")
    try:
        settings = Settings(database_url=db, broker_url=broker, data_dir=data, bootstrap_api_key=API_KEY,
                            webhook_allow_private_networks=True)
        with TestClient(create_app(settings)) as client:
            client.headers["Authorization"] = f"Bearer {API_KEY}"
            hook = register(client, receiver.url(), events=["job.succeeded"])
            job = submit(client, digits_teacher)
            wait_for(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"), worker=worker)
            [got] = receiver.wait_for(1)
            verify(hook["secret"], got.headers["kd-signature"], got.body)
            assert json.loads(got.body)["data"]["job"] == {**json.loads(got.body)["data"]["job"], "id": job["id"],
                                                          "status": "succeeded"}
            [done] = deliveries_until(client, hook["id"], lambda d: d and d[0]["status"] == "succeeded", worker)
            assert done["attempt_count"] == 1
    finally:
        worker.stop()
