"""The worker's webhook sender, in this process, on the test's PostgreSQL, posting to a real local
receiver: the signed request, the SSRF rule after DNS resolution, the connection to the checked address,
no redirects, the timeout. (tests/api/test_webhooks.py runs it inside `python -m worker` for real jobs.)
The only thing replaced is DNS, outside the product, for names that must resolve to chosen addresses."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs import tenants_repo, webhooks_repo
from jobs.tables import Webhook, WebhookDelivery, utcnow
from harness.services import free_port
from tests.webhook_receiver import Receiver, self_signed_certificate, verify
from worker.context import WorkerContext
from worker.webhook_sender import SENDS_PER_ROUND, SENDS_PER_TENANT, WebhookSender, resolve

UNCAPPED = {"pending_limit": 1000}  # a cap on pending pings these tests never reach

ALL = ["job.succeeded", "job.failed", "job.cancelled"]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make(settings, **cfg) -> WebhookSender:
    settings = settings.model_copy(update={"webhook_max_attempts": 2, "webhook_retry_base_seconds": 60, **cfg})
    return WebhookSender(WorkerContext.build(settings, name="test-sender"))


def ping(sender: WebhookSender, url: str) -> tuple[str, str]:
    """A webhook for `url` (registered without the API's check, as if the setting or DNS changed since)
    and a ping to it: (delivery id, secret)."""
    with sender.sessions() as s:
        tenant = tenants_repo.get_or_create(s, name="acme")
        hook = webhooks_repo.create(s, tenant_id=tenant.id, url=url, events=ALL, now=utcnow())
        delivery = webhooks_repo.enqueue_ping(s, tenant_id=tenant.id, webhook_id=hook.id, now=utcnow(), **UNCAPPED)
        s.commit()
        return delivery.id, hook.secret


def delivery(sender: WebhookSender, delivery_id: str) -> WebhookDelivery:
    with sender.sessions() as s:
        return s.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))


def test_a_delivery_is_signed_and_carries_its_event(settings, receiver):
    sender = make(settings, webhook_allow_private_networks=True)
    delivery_id, secret = ping(sender, receiver.url("/hooks/kd?x=1"))
    assert sender.run_once() == 1
    [got] = receiver.requests
    row = delivery(sender, delivery_id)
    assert got.path == "/hooks/kd?x=1" and got.body == row.body.encode()
    verify(secret, got.headers["kd-signature"], got.body)
    with pytest.raises(AssertionError):
        verify("whsec_wrong", got.headers["kd-signature"], got.body)
    event = json.loads(got.body)
    assert got.headers["kd-event-id"] == event["id"] == row.event_id and event["type"] == "ping"
    assert got.headers["kd-event-type"] == "ping" and got.headers["kd-delivery-id"] == delivery_id
    assert got.headers["content-type"] == "application/json" and got.headers["user-agent"] == "kd-webhooks/1"
    assert (row.status, row.attempt_count, row.last_status_code) == ("succeeded", 1, 204)
    [attempt] = row.attempts
    assert attempt["status_code"] == 204 and attempt["address"] == "127.0.0.1" and attempt["error"] is None
    assert sender.run_once() == 0  # nothing more to send


@pytest.mark.parametrize("host, resolved, kind", [
    ("127.0.0.1", None, "loopback"),
    ("localhost", None, "loopback"),  # the machine's own resolver
    ("10.0.0.7", None, "private"),
    ("169.254.169.254", None, "link-local"),
    ("hooks.test", ["93.184.216.34", "10.1.1.1"], "private"),  # one bad address among good ones is enough
    ("rebind.test", ["::ffff:127.0.0.1"], "loopback"),
])
def test_non_public_destinations_are_refused_after_resolution(settings, receiver, host, resolved, kind):
    def resolver(name: str, port: int):
        return [ipaddress.ip_address(a) for a in resolved] if resolved else resolve(name, port)

    sender = make(settings)  # KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS off, the default
    sender.resolver = resolver
    delivery_id, _ = ping(sender, receiver.url(host=host))
    assert sender.run_once() == 1
    row = delivery(sender, delivery_id)
    assert receiver.requests == []
    [attempt] = row.attempts
    assert attempt["status_code"] is None and f"a {kind} address" in attempt["error"]
    assert "KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS" in attempt["error"] and row.last_error == attempt["error"]
    assert row.status == "pending" and row.next_attempt_at is not None  # retried later: DNS may change


def test_the_connection_goes_to_the_address_that_was_checked(settings, receiver):
    """`hooks.test` resolves (here) to 127.0.0.1 and nowhere else: were the HTTP client to look the name up
    again, the attempt would fail; it connects to the checked address and sends the name as Host."""
    sender = make(settings, webhook_allow_private_networks=True)
    sender.resolver = lambda name, port: [ipaddress.ip_address("127.0.0.1")]
    delivery_id, _ = ping(sender, receiver.url(host="hooks.test"))
    sender.run_once()
    [got] = receiver.requests
    assert got.headers["host"] == f"hooks.test:{receiver.port}"
    assert delivery(sender, delivery_id).status == "succeeded"


def test_redirects_are_not_followed(settings, receiver):
    elsewhere = Receiver()
    try:
        receiver.status, receiver.location = 307, elsewhere.url()
        sender = make(settings, webhook_allow_private_networks=True)
        delivery_id, _ = ping(sender, receiver.url())
        sender.run_once()
        row = delivery(sender, delivery_id)
        assert len(receiver.requests) == 1 and elsewhere.requests == []
        assert row.last_status_code == 307 and "redirects are not followed" in row.last_error
        assert row.status == "pending"
    finally:
        elsewhere.close()


def test_a_receiver_that_does_not_answer_in_time_is_an_attempt_that_failed(settings, receiver):
    receiver.delay = 3
    sender = make(settings, webhook_allow_private_networks=True, webhook_timeout_seconds=0.5)
    delivery_id, _ = ping(sender, receiver.url())
    sender.run_once()
    row = delivery(sender, delivery_id)
    assert "within 0.5 s (KD_WEBHOOK_TIMEOUT_SECONDS)" in row.last_error and row.last_status_code is None


class TricklingReceiver:
    """Answers `HTTP/1.1 200 OK` and then one header byte every 0.1 s, for a minute: every read
    gets something well within any per-read timeout, the status never completes. Serves each
    connection in a thread of its own; `connections` counts them."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stop, self.accepted = threading.Event(), threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self.connections += 1
            self.accepted.set()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            deadline = time.monotonic() + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.sendall(b"a")
                except OSError:  # the sender hung up
                    return
                time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def test_a_receiver_that_trickles_its_answer_is_cut_at_the_attempts_whole_time(settings):
    slow = TricklingReceiver()
    try:
        sender = make(settings, webhook_allow_private_networks=True, webhook_timeout_seconds=0.5)
        delivery_id, _ = ping(sender, f"http://127.0.0.1:{slow.port}/hook")
        round_ = threading.Thread(target=sender.run_once, daemon=True)
        started = time.monotonic()
        round_.start()
        round_.join(timeout=20)
        took = time.monotonic() - started
        assert not round_.is_alive(), "the round never ended: the trickle held it"
        row = delivery(sender, delivery_id)
        assert "within 1.5 s (3 × KD_WEBHOOK_TIMEOUT_SECONDS" in row.last_error, row.last_error
        assert row.last_status_code is None and row.status == "pending"  # retried later, like any failure
        assert took < 5, took  # 1.5 s and the recording, not the receiver's minute
    finally:
        slow.close()


def test_a_slow_receiver_holds_its_own_thread_and_no_one_elses_delivery(settings, receiver):
    slow = TricklingReceiver()
    sender = make(settings, webhook_allow_private_networks=True, webhook_timeout_seconds=2, webhook_poll_seconds=0.1)
    stop = sender.start()
    try:
        ping(sender, f"http://127.0.0.1:{slow.port}/hook")  # cut only after 6 s
        assert slow.accepted.wait(10)
        started = time.monotonic()
        fast_id, _ = ping(sender, receiver.url())
        while delivery(sender, fast_id).status == "pending" and time.monotonic() - started < 10:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert delivery(sender, fast_id).status == "succeeded"
        assert took < 3, f"the fast delivery waited {took:.1f} s behind the slow attempt"
    finally:
        stop.set()
        slow.close()


def test_one_tenants_slow_receivers_take_at_most_half_the_sender_threads(settings, receiver):
    slow = TricklingReceiver()
    sender = make(settings, webhook_allow_private_networks=True, webhook_timeout_seconds=2, webhook_poll_seconds=0.1)
    with sender.sessions() as s:
        loud = tenants_repo.get_or_create(s, name="loud")
        hook = webhooks_repo.create(s, tenant_id=loud.id, url=f"http://127.0.0.1:{slow.port}/", events=ALL,
                                    now=utcnow())
        for _ in range(SENDS_PER_ROUND):
            webhooks_repo.enqueue_ping(s, tenant_id=loud.id, webhook_id=hook.id, now=utcnow(), **UNCAPPED)
        s.commit()
    stop = sender.start()
    try:
        assert slow.accepted.wait(10)
        time.sleep(0.5)  # rounds every 0.1 s: the loud tenant's other deliveries had their chance
        assert slow.connections == SENDS_PER_TENANT
        started = time.monotonic()
        fast_id, _ = ping(sender, receiver.url())  # another tenant ("acme")
        while delivery(sender, fast_id).status == "pending" and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert delivery(sender, fast_id).status == "succeeded" and time.monotonic() - started < 3
    finally:
        stop.set()
        slow.close()


def test_a_closed_port_and_an_unknown_name_are_recorded(settings):
    sender = make(settings, webhook_allow_private_networks=True)
    closed, _ = ping(sender, f"http://127.0.0.1:{free_port()}/hook")
    unknown, _ = ping(sender, "http://no-such-host.invalid/hook")
    assert sender.run_once() == 2
    assert "could not post to 127.0.0.1" in delivery(sender, closed).last_error
    assert "could not resolve no-such-host.invalid" in delivery(sender, unknown).last_error


def test_https_verifies_the_urls_name_on_the_checked_address(settings, tmp_path):
    """TLS to the pinned address still checks the certificate against the URL's host (sent as SNI): a
    certificate for hooks.test passes for https://hooks.test/..., and the same server named otherwise fails."""
    import ssl

    cert, key = self_signed_certificate(tmp_path, "hooks.test")
    receiver = Receiver(tls=(cert, key))
    try:
        sender = make(settings, webhook_allow_private_networks=True)
        sender.ssl_context = ssl.create_default_context(cafile=cert)  # trust the test's own issuer
        sender.resolver = lambda name, port: [ipaddress.ip_address("127.0.0.1")]
        good, secret = ping(sender, receiver.url(host="hooks.test"))
        wrong_name, _ = ping(sender, receiver.url(host="other.test"))
        assert sender.run_once() == 2
        assert delivery(sender, good).status == "succeeded"
        [got] = receiver.requests
        verify(secret, got.headers["kd-signature"], got.body)
        row = delivery(sender, wrong_name)
        assert row.status == "pending" and "certificate" in row.last_error.lower(), row.last_error
    finally:
        receiver.close()


def test_the_sender_deletes_finished_deliveries_past_their_retention(settings, receiver):
    sender = make(settings, webhook_allow_private_networks=True, webhook_delivery_retention_seconds=3600)
    delivery_id, _ = ping(sender, receiver.url())
    sender.run_once()
    assert sender.purge() == 0  # finished just now: kept
    with sender.sessions() as s:
        row = s.get(WebhookDelivery, delivery_id)
        row.finished_at = utcnow() - timedelta(hours=2)
        s.commit()
    assert sender.purge() == 1 and delivery(sender, delivery_id) is None


def test_after_a_rotation_both_secrets_sign_the_delivery(settings, receiver):
    sender = make(settings, webhook_allow_private_networks=True)
    delivery_id, old_secret = ping(sender, receiver.url())
    with sender.sessions() as s:
        hook_id = delivery(sender, delivery_id).webhook_id
        row = s.get(Webhook, hook_id)
        new_secret = webhooks_repo.rotate_secret(s, tenant_id=row.tenant_id, webhook_id=hook_id, now=utcnow(),
                                                 previous_valid_seconds=3600).secret
        s.commit()
    sender.run_once()
    [got] = receiver.requests
    header = got.headers["kd-signature"]
    assert header.count("v1=") == 2
    verify(new_secret, header, got.body)
    verify(old_secret, header, got.body)
