"""The webhook outbox on both databases: deliveries are queued in the transaction that ends a job,
claimed once, retried with backoff, failed after the attempt limit; every query keeps to its tenant."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs import lifecycle, tenants_repo, webhooks_repo
from jobs.db import make_sessionmaker
from jobs.errors import Conflict, NotFound, TooManyPending
from jobs.tables import WebhookDelivery, utcnow

UNCAPPED = {"pending_limit": 1000}  # a cap these tests never reach (the cap: test_pings_and_redeliveries_are_capped)

ALL = ["job.succeeded", "job.failed", "job.cancelled"]
CLAIM = {"limit": 10, "attempt_seconds": 5, "max_attempts": 3}
RETRY = {"max_attempts": 3, "retry_base": 10, "retry_max": 15}


def deliveries(session, **where) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    for name, value in where.items():
        stmt = stmt.where(getattr(WebhookDelivery, name) == value)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))


@pytest.fixture
def hook(session, tenant):
    row = webhooks_repo.create(session, tenant_id=tenant.id, url="https://hooks.example/kd", events=ALL, now=utcnow())
    session.commit()
    return row


def finish(session, job, how: str) -> None:
    """Take the job to a terminal status through the state machine; not committed."""
    if how == "cancelled":
        lifecycle.request_cancel(session, tenant_id=job.tenant_id, job_id=job.id)
        return
    attempt = lifecycle.claim(session, job_id=job.id, lease_seconds=60, worker="w")
    session.commit()
    if how == "succeeded":
        assert lifecycle.succeed(session, job_id=job.id, attempt=attempt, result={"ok": 1})
    else:
        assert lifecycle.fail(session, job_id=job.id, attempt=attempt, code="invalid_input", message="bad data")


@pytest.fixture
def succeeded_job(session, make_job, hook):
    """A job taken to succeeded, with its delivery to `hook` queued (committed)."""
    job = make_job()
    finish(session, job, "succeeded")
    session.commit()
    return job


def claim_one(session, now):
    """The one due delivery, claimed at `now` (committed)."""
    [claimed] = webhooks_repo.claim_due(session, now=now, **CLAIM)
    session.commit()
    return claimed


@pytest.mark.parametrize("how", ["succeeded", "failed", "cancelled"])
def test_a_terminal_status_queues_one_delivery_per_subscribed_webhook(session, make_tenant, make_job, hook, how):
    only_failed = webhooks_repo.create(session, tenant_id=hook.tenant_id, url="https://b.example/", events=["job.failed"],
                                       now=utcnow())
    other = make_tenant("other")
    webhooks_repo.create(session, tenant_id=other.id, url="https://c.example/", events=ALL, now=utcnow())
    session.commit()
    job = make_job()
    finish(session, job, how)
    session.commit()
    rows = deliveries(session)
    expected = {hook.id} | ({only_failed.id} if how == "failed" else set())
    assert {r.webhook_id for r in rows} == expected  # never the other tenant's webhook
    assert {r.tenant_id for r in rows} == {hook.tenant_id}
    assert len({r.event_id for r in rows}) == 1  # one event, the same id for every webhook
    row = rows[0]
    assert (row.event_type, row.job_id, row.status, row.attempt_count) == (f"job.{how}", job.id, "pending", 0)
    body = json.loads(row.body)
    assert body["type"] == f"job.{how}" and body["id"] == row.event_id and body["object"] == "event"
    assert body["data"]["job"]["id"] == job.id and body["data"]["job"]["status"] == how
    assert body["data"]["job"]["finished_at"] is not None
    if how == "failed":
        assert body["data"]["job"]["error_code"] == "invalid_input"


def test_the_delivery_commits_with_the_status_or_not_at_all(session, make_job, hook):
    job = make_job()
    attempt = lifecycle.claim(session, job_id=job.id, lease_seconds=60, worker="w")
    session.commit()
    assert lifecycle.succeed(session, job_id=job.id, attempt=attempt, result={})
    session.rollback()  # the worker died before its commit: no status, and no event either
    assert deliveries(session) == []
    assert lifecycle.succeed(session, job_id=job.id, attempt=attempt, result={})
    session.commit()
    assert len(deliveries(session)) == 1
    # a status that is not terminal queues nothing, and a second terminal write is refused by the fence
    assert not lifecycle.fail(session, job_id=job.id, attempt=attempt, code="x", message="y")
    session.commit()
    assert len(deliveries(session)) == 1


def test_no_webhook_no_delivery(session, make_job):
    job = make_job()
    finish(session, job, "cancelled")
    session.commit()
    assert deliveries(session) == []


def test_claim_record_backoff_and_give_up(session, succeeded_job, hook):
    now = utcnow()
    claimed = claim_one(session, now)
    assert (claimed.attempt, claimed.url, claimed.secrets) == (1, hook.url, (hook.secret,))
    assert json.loads(claimed.body)["data"]["job"]["id"] == succeeded_job.id
    assert webhooks_repo.claim_due(session, now=now + timedelta(seconds=30), **CLAIM) == []  # held by the claim

    outcome = {"started_at": "t", "duration_ms": 3, "address": "203.0.113.9", "status_code": 500,
               "error": "the receiver answered 500"}
    assert webhooks_repo.record_attempt(session, delivery_id=claimed.delivery_id, attempt=1, outcome=outcome,
                                        ok=False, now=now, **RETRY) == "pending"
    session.commit()
    [row] = deliveries(session)
    assert row.next_attempt_at == now + timedelta(seconds=10)  # base
    assert (row.last_status_code, row.last_error) == (500, "the receiver answered 500")
    assert webhooks_repo.claim_due(session, now=now + timedelta(seconds=9), **CLAIM) == []  # not due yet
    [second] = webhooks_repo.claim_due(session, now=now + timedelta(seconds=10), **CLAIM)
    assert second.attempt == 2
    assert webhooks_repo.record_attempt(session, delivery_id=second.delivery_id, attempt=2, outcome=outcome,
                                        ok=False, now=now, **RETRY) == "pending"
    session.commit()
    assert deliveries(session)[0].next_attempt_at == now + timedelta(seconds=15)  # 2 x base, capped at 15
    [third] = webhooks_repo.claim_due(session, now=now + timedelta(seconds=15), **CLAIM)
    assert webhooks_repo.record_attempt(session, delivery_id=third.delivery_id, attempt=3, outcome=outcome,
                                        ok=False, now=now, **RETRY) == "failed"
    session.commit()
    [row] = deliveries(session)
    assert (row.status, row.attempt_count, row.next_attempt_at) == ("failed", 3, None)
    assert [a["number"] for a in row.attempts] == [1, 2, 3] and row.finished_at is not None
    assert webhooks_repo.claim_due(session, now=now + timedelta(days=1), **CLAIM) == []


def test_a_2xx_succeeds_and_a_stale_attempt_records_nothing(session, succeeded_job):
    now = utcnow()
    first = claim_one(session, now)
    # the first sender died mid-attempt: after its claim expires another takes the row
    later = now + timedelta(seconds=CLAIM["attempt_seconds"] + webhooks_repo.CLAIM_MARGIN_SECONDS)
    second = claim_one(session, later)
    assert second.attempt == 2
    ok = {"status_code": 204, "error": None}
    assert webhooks_repo.record_attempt(session, delivery_id=first.delivery_id, attempt=1, outcome=ok, ok=True,
                                        now=later, **RETRY) is None
    assert webhooks_repo.record_attempt(session, delivery_id=second.delivery_id, attempt=2, outcome=ok, ok=True,
                                        now=later, **RETRY) == "succeeded"
    session.commit()
    [row] = deliveries(session)
    assert (row.status, row.last_status_code, row.next_attempt_at) == ("succeeded", 204, None)
    assert row.attempts[0]["number"] == 1 and "sender stopped" in row.attempts[0]["error"]
    assert row.attempts[1] == {"number": 2, **ok}


def test_a_delivery_whose_last_attempt_never_came_back_is_failed(session, succeeded_job):
    now = utcnow()
    for n in range(CLAIM["max_attempts"]):
        now += timedelta(hours=1)
        claim_one(session, now)  # each sender dies
    assert webhooks_repo.claim_due(session, now=now + timedelta(hours=1), **CLAIM) == []
    session.commit()
    [row] = deliveries(session)
    assert (row.status, row.attempt_count) == ("failed", 3) and "sender stopped" in row.last_error


def test_the_tenants_side_keeps_to_its_tenant(session, make_tenant, make_job, hook):
    other = make_tenant("other")
    for fn in (webhooks_repo.get, webhooks_repo.delete_webhook, webhooks_repo.enqueue_ping):
        kwargs = {"now": utcnow(), **UNCAPPED} if fn is webhooks_repo.enqueue_ping else {}
        with pytest.raises(NotFound):
            fn(session, tenant_id=other.id, webhook_id=hook.id, **kwargs)
    with pytest.raises(NotFound):
        webhooks_repo.list_deliveries(session, tenant_id=other.id, webhook_id=hook.id, limit=10, after=None)
    assert webhooks_repo.list_webhooks(session, tenant_id=other.id) == []
    assert webhooks_repo.count(session, tenant_id=other.id) == 0
    ping = webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=utcnow(), **UNCAPPED)
    session.commit()
    rows, more = webhooks_repo.list_deliveries(session, tenant_id=hook.tenant_id, webhook_id=hook.id, limit=10,
                                               after=None)
    assert [r.id for r in rows] == [ping.id] and not more
    with pytest.raises(NotFound):  # a cursor of this tenant's delivery, asked by another tenant
        webhooks_repo.list_deliveries(session, tenant_id=other.id, webhook_id=hook.id, limit=10, after=ping.id)
    webhooks_repo.delete_webhook(session, tenant_id=hook.tenant_id, webhook_id=hook.id)
    session.commit()
    assert deliveries(session) == []  # its log goes with it; a pending delivery is never sent


def test_concurrent_senders_never_claim_the_same_delivery(pg_engine):
    sessions = make_sessionmaker(pg_engine)
    with sessions() as s:
        tenant = tenants_repo.get_or_create(s, name="acme")
        hook = webhooks_repo.create(s, tenant_id=tenant.id, url="https://hooks.example/", events=ALL, now=utcnow())
        for _ in range(12):
            webhooks_repo.enqueue_ping(s, tenant_id=tenant.id, webhook_id=hook.id, now=utcnow(), **UNCAPPED)
        s.commit()
    barrier, taken, lock = threading.Barrier(4), [], threading.Lock()

    def sender() -> None:
        barrier.wait()
        with sessions() as s:
            claimed = webhooks_repo.claim_due(s, now=utcnow(), limit=5, attempt_seconds=5, max_attempts=3)
            s.commit()
        with lock:
            taken.extend(c.delivery_id for c in claimed)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 12 and len(set(taken)) == 12


def test_finished_deliveries_are_purged_after_their_retention_and_pending_ones_never(session, make_job, hook):
    now = utcnow()
    old_done, old_pending, new_done = (
        webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now, **UNCAPPED)
        for _ in range(3))
    old_done.status, old_done.finished_at = "succeeded", now - timedelta(days=40)
    new_done.status, new_done.finished_at = "failed", now - timedelta(days=1)
    old_pending.created_at = now - timedelta(days=40)
    session.commit()
    assert webhooks_repo.purge_finished(session, before=now - timedelta(days=30)) == 1
    session.commit()
    assert {d.id for d in deliveries(session)} == {old_pending.id, new_done.id}


def test_a_finished_delivery_can_be_sent_again_as_a_new_one(session, make_tenant, hook):
    now = utcnow()
    first = webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now, **UNCAPPED)
    session.commit()
    with pytest.raises(Conflict):  # still pending: it is retried on its own
        webhooks_repo.redeliver(session, tenant_id=hook.tenant_id, webhook_id=hook.id, delivery_id=first.id, now=now,
                                **UNCAPPED)
    [claimed] = webhooks_repo.claim_due(session, now=now, **CLAIM)
    webhooks_repo.record_attempt(session, delivery_id=claimed.delivery_id, attempt=1, outcome={"status_code": 500},
                                 ok=False, now=now, **{**RETRY, "max_attempts": 1})
    session.commit()
    other = make_tenant("other")
    with pytest.raises(NotFound):
        webhooks_repo.redeliver(session, tenant_id=other.id, webhook_id=hook.id, delivery_id=first.id, now=now,
                                **UNCAPPED)
    again = webhooks_repo.redeliver(session, tenant_id=hook.tenant_id, webhook_id=hook.id, delivery_id=first.id,
                                    now=now, **UNCAPPED)
    session.commit()
    assert (again.event_id, again.body, again.status, again.attempt_count) == (first.event_id, first.body, "pending", 0)
    [claimed] = webhooks_repo.claim_due(session, now=now, **CLAIM)
    assert claimed.delivery_id == again.id and claimed.attempt == 1


def test_a_rotated_secret_signs_beside_the_new_one_until_it_expires(session, make_tenant, hook):
    now = utcnow()
    old_secret = hook.secret
    with pytest.raises(NotFound):
        webhooks_repo.rotate_secret(session, tenant_id=make_tenant("other").id, webhook_id=hook.id, now=now,
                                    previous_valid_seconds=60)
    rotated = webhooks_repo.rotate_secret(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now,
                                          previous_valid_seconds=60)
    new_secret = rotated.secret
    assert new_secret != old_secret and rotated.previous_secret == old_secret
    for _ in range(2):
        webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now, **UNCAPPED)
    session.commit()
    [claimed] = webhooks_repo.claim_due(session, now=now, **{**CLAIM, "limit": 1})
    assert claimed.secrets == (new_secret, old_secret)
    [claimed] = webhooks_repo.claim_due(session, now=now + timedelta(seconds=61), **{**CLAIM, "limit": 1})
    assert claimed.secrets == (new_secret,)  # the old one has expired
    session.commit()
    again = webhooks_repo.rotate_secret(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now,
                                        previous_valid_seconds=0)
    assert again.previous_secret is None and again.previous_secret_expires_at is None


def test_pings_and_redeliveries_are_capped(session, hook):
    """A ping or redelivery past `pending_limit` waiting deliveries is refused: the service never sends a
    receiver more than that at a tenant's request (job events are never refused)."""
    now = utcnow()
    first = webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now, pending_limit=2)
    webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now, pending_limit=2)
    session.commit()
    with pytest.raises(TooManyPending) as refused:
        webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id, now=now, pending_limit=2)
    session.rollback()
    assert (refused.value.pending, refused.value.limit) == (2, 2)
    assert "KD_WEBHOOK_PENDING_LIMIT" in refused.value.message
    assert len(deliveries(session)) == 2  # nothing was added
    # one of them sent: a redelivery of it fits again, and then the cap holds for redeliveries too
    [claimed] = webhooks_repo.claim_due(session, now=now, **{**CLAIM, "limit": 1})
    webhooks_repo.record_attempt(session, delivery_id=claimed.delivery_id, attempt=1, outcome={"status_code": 200},
                                 ok=True, now=now, **RETRY)
    session.commit()
    sent = claimed.delivery_id
    webhooks_repo.redeliver(session, tenant_id=hook.tenant_id, webhook_id=hook.id, delivery_id=sent, now=now,
                            pending_limit=2)
    session.commit()
    with pytest.raises(TooManyPending):
        webhooks_repo.redeliver(session, tenant_id=hook.tenant_id, webhook_id=hook.id, delivery_id=sent, now=now,
                                pending_limit=2)
    session.rollback()
    assert first.id in {d.id for d in deliveries(session)}


def test_a_claim_caps_one_tenants_attempts_under_way(session, make_tenant, hook):
    """One tenant's due deliveries, older than another's, take no more than `per_tenant` attempts at once,
    counting those already under way; the other tenant's come next in the same claim."""
    now = utcnow()
    loud = [webhooks_repo.enqueue_ping(session, tenant_id=hook.tenant_id, webhook_id=hook.id,
                                       now=now - timedelta(seconds=10), **UNCAPPED) for _ in range(6)]
    quiet_tenant = make_tenant("quiet")
    quiet_hook = webhooks_repo.create(session, tenant_id=quiet_tenant.id, url="https://q.example/", events=ALL, now=now)
    quiet = webhooks_repo.enqueue_ping(session, tenant_id=quiet_tenant.id, webhook_id=quiet_hook.id, now=now,
                                       **UNCAPPED)
    session.commit()
    claim = {**CLAIM, "limit": 8}
    taken = webhooks_repo.claim_due(session, now=now, per_tenant=4, in_flight={hook.tenant_id: 1}, **claim)
    session.commit()
    assert [c.tenant_id for c in taken].count(hook.tenant_id) == 3 and quiet.id in {c.delivery_id for c in taken}
    assert all(c.tenant_id in (hook.tenant_id, quiet_tenant.id) for c in taken)
    # at its share: none of the loud tenant's three still due is taken
    taken = webhooks_repo.claim_due(session, now=now, per_tenant=4, in_flight={hook.tenant_id: 4}, **claim)
    assert taken == []
    # no cap: the rest
    assert {c.delivery_id for c in webhooks_repo.claim_due(session, now=now, **claim)} <= {d.id for d in loud}
