"""The job state machine on both databases: claim, lease expiry, fencing, cancel, exhaustion."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import pytest
from sqlalchemy import event, select

from jobs import jobs_repo, lifecycle
from jobs.errors import Conflict, LeaseLost, NotFound
from jobs.tables import Artifact, Job, JobMetric, utcnow

LEASE = 60


def later(seconds: float):
    return utcnow() + timedelta(seconds=seconds)


def fresh(session, job_id: str) -> Job:
    return jobs_repo.load_for_worker(session, job_id=job_id)


def test_first_claim_wins_second_returns_none(session, make_job):
    job = make_job()
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1") == 1
    session.commit()
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2") is None
    session.commit()
    row = fresh(session, job.id)
    assert (row.status, row.attempt, row.worker) == ("running", 1, "w1")
    assert row.started_at is not None and row.lease_until > utcnow()


def test_a_job_the_session_holds_reads_as_changed_after_a_transition(session, make_job):
    """lifecycle's UPDATEs go to the table, past the ORM: a Job object the caller's session already holds
    is expired by them, so it reads the row as it now is, not as it was loaded."""
    job = make_job()
    held = session.get(Job, job.id)
    assert held.status == "queued"
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1") == 1
    assert (held.status, held.attempt, held.worker) == ("running", 1, "w1")
    assert lifecycle.succeed(session, job_id=job.id, attempt=1, result={"ok": True})
    assert (held.status, held.result) == ("succeeded", {"ok": True})


def test_claim_of_unknown_job_returns_none(session):
    assert lifecycle.claim(session, job_id="job_missing", lease_seconds=LEASE, worker="w") is None


def test_expired_lease_is_reclaimed_with_the_next_attempt(session, make_job):
    job = make_job()
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1") == 1
    session.commit()
    started = fresh(session, job.id).started_at
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(30)) is None
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) == 2
    session.commit()
    row = fresh(session, job.id)
    assert (row.status, row.attempt, row.worker) == ("running", 2, "w2")
    assert row.started_at == started  # the first start is kept


def test_stale_attempt_writes_change_nothing(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    session.commit()
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) == 2
    session.commit()
    before = fresh(session, job.id)
    lease_before, events_before = before.lease_until, len(jobs_repo.events(session, tenant_id=job.tenant_id,
                                                                           job_id=job.id))

    assert lifecycle.heartbeat(session, job_id=job.id, attempt=1, lease_seconds=LEASE) == \
        lifecycle.HeartbeatResult(alive=False, cancel_requested=False)
    assert lifecycle.set_progress(session, job_id=job.id, attempt=1, progress={"phase": "training"}) is False
    assert lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="stale") is None
    assert lifecycle.add_metric(session, job_id=job.id, attempt=1, run="student", epoch=1, values={"a": 1}) is False
    assert lifecycle.add_artifact(session, job_id=job.id, attempt=1, kind="summary", storage_key="k",
                                  bytes=1, sha256="0" * 64) is False
    assert lifecycle.succeed(session, job_id=job.id, attempt=1, result={"ok": True}) is False
    assert lifecycle.fail(session, job_id=job.id, attempt=1, code="x", message="y") is False
    assert lifecycle.finish_cancelled(session, job_id=job.id, attempt=1) is False
    with pytest.raises(LeaseLost):
        lifecycle.require_lease(lifecycle.set_progress(session, job_id=job.id, attempt=1, progress={}),
                                job_id=job.id, attempt=1)
    session.commit()

    after = fresh(session, job.id)
    assert (after.status, after.attempt, after.progress, after.result) == ("running", 2, None, None)
    assert after.lease_until == lease_before
    assert len(jobs_repo.events(session, tenant_id=job.tenant_id, job_id=job.id)) == events_before
    assert session.scalars(select(JobMetric)).all() == []
    assert session.scalars(select(Artifact)).all() == []
    # the current attempt still writes
    assert lifecycle.heartbeat(session, job_id=job.id, attempt=2, lease_seconds=LEASE).alive


def test_heartbeat_extends_the_lease(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    session.commit()
    assert lifecycle.heartbeat(session, job_id=job.id, attempt=1, lease_seconds=LEASE, now=later(50)).alive
    session.commit()
    # 50 + 60 > 61: the lease has not expired at 61 s, so nobody can take the job
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) is None
    assert fresh(session, job.id).attempt == 1


def test_exhausted_attempts_fail_with_a_message(session, make_job):
    job = make_job(max_attempts=2)
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1") == 1
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(61)) == 2
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w3", now=later(200)) is None
    session.commit()
    row = fresh(session, job.id)
    assert (row.status, row.attempt, row.error_code) == ("failed", 2, "max_attempts_exceeded")
    assert "after 2 attempts" in row.error_message and "max_attempts=2" in row.error_message
    assert row.finished_at is not None
    assert lifecycle.fail_exhausted(session, job_id=job.id, now=later(300)) is False  # already failed


def test_fail_exhausted_leaves_a_live_lease_alone(session, make_job):
    job = make_job(max_attempts=1)
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    assert lifecycle.fail_exhausted(session, job_id=job.id) is False
    assert fresh(session, job.id).status == "running"


def test_succeed_and_fail_record_the_outcome(session, make_job):
    ok, bad = make_job(), make_job()
    for job in (ok, bad):
        lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    assert lifecycle.succeed(session, job_id=ok.id, attempt=1, result={"student_accuracy": 0.9})
    assert lifecycle.fail(session, job_id=bad.id, attempt=1, code="teacher_error", message="keys differ")
    session.commit()
    ok_row, bad_row = fresh(session, ok.id), fresh(session, bad.id)
    assert (ok_row.status, ok_row.result, ok_row.lease_until) == ("succeeded", {"student_accuracy": 0.9}, None)
    assert (bad_row.status, bad_row.error_code, bad_row.error_message) == ("failed", "teacher_error", "keys differ")
    assert ok_row.finished_at is not None and bad_row.finished_at is not None


def test_cancel_a_queued_job_at_once(session, make_job, tenant):
    job = make_job()
    assert lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id) == "cancelled"
    session.commit()
    row = fresh(session, job.id)
    assert row.status == "cancelled" and row.cancel_requested and row.finished_at is not None
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w") is None


def test_cancel_a_running_job_through_cancelling(session, make_job, tenant):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    session.commit()
    assert lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id) == "cancelling"
    assert lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id) == "cancelling"
    session.commit()
    beat = lifecycle.heartbeat(session, job_id=job.id, attempt=1, lease_seconds=LEASE)
    assert beat == lifecycle.HeartbeatResult(alive=True, cancel_requested=True)
    assert lifecycle.finish_cancelled(session, job_id=job.id, attempt=1)
    session.commit()
    row = fresh(session, job.id)
    assert row.status == "cancelled" and row.finished_at is not None


def test_finish_cancelled_needs_a_cancel_request(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    assert lifecycle.finish_cancelled(session, job_id=job.id, attempt=1) is False
    assert fresh(session, job.id).status == "running"


def test_cancelling_job_with_expired_lease_is_cancelled_not_reclaimed(session, make_job, tenant):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id)
    session.commit()
    assert lifecycle.find_jobs_to_enqueue(session, now=later(LEASE + 1), queued_after_seconds=60) == [job.id]
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) is None
    session.commit()
    row = fresh(session, job.id)
    assert (row.status, row.attempt) == ("cancelled", 1)


@pytest.mark.parametrize("finish", ["succeed", "fail", "cancel"])
def test_cancel_of_a_finished_job_is_a_conflict(session, make_job, tenant, finish):
    job = make_job()
    if finish == "cancel":
        lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id)
        expected = "cancelled"
    else:
        lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
        if finish == "succeed":
            lifecycle.succeed(session, job_id=job.id, attempt=1, result={})
            expected = "succeeded"
        else:
            lifecycle.fail(session, job_id=job.id, attempt=1, code="c", message="m")
            expected = "failed"
    session.commit()
    with pytest.raises(Conflict, match=expected):
        lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id)


def test_cancel_of_another_tenants_job_is_not_found(session, make_job, make_tenant):
    job = make_job()
    other = make_tenant("other")
    with pytest.raises(NotFound):
        lifecycle.request_cancel(session, tenant_id=other.id, job_id=job.id)
    with pytest.raises(NotFound):
        lifecycle.request_cancel(session, tenant_id=other.id, job_id="job_nonexistent")
    assert fresh(session, job.id).status == "queued"


def test_terminal_states_are_final(session, make_job, tenant):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id)
    assert lifecycle.finish_cancelled(session, job_id=job.id, attempt=1)
    session.commit()
    assert lifecycle.succeed(session, job_id=job.id, attempt=1, result={"late": True}) is False
    assert lifecycle.fail(session, job_id=job.id, attempt=1, code="c", message="m") is False
    assert lifecycle.heartbeat(session, job_id=job.id, attempt=1, lease_seconds=LEASE).alive is False
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(1000)) is None
    assert lifecycle.fail_exhausted(session, job_id=job.id, now=later(1000)) is False
    session.commit()
    row = fresh(session, job.id)
    assert (row.status, row.result, row.error_code) == ("cancelled", None, None)


def test_succeed_wins_over_a_late_cancel_request(session, make_job, tenant):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id)
    assert lifecycle.succeed(session, job_id=job.id, attempt=1, result={"done": True})
    assert fresh(session, job.id).status == "succeeded"


def test_events_are_numbered_per_job(session, make_job):
    a, b = make_job(), make_job()
    lifecycle.claim(session, job_id=a.id, lease_seconds=LEASE, worker="w")  # seq 1: status running
    lifecycle.claim(session, job_id=b.id, lease_seconds=LEASE, worker="w")
    seqs = [lifecycle.add_event(session, job_id=a.id, attempt=1, type="log", message=f"m{i}", data={"i": i})
            for i in range(3)]
    assert seqs == [2, 3, 4]
    assert lifecycle.add_event(session, job_id=b.id, attempt=1, type="log", message="b") == 2
    session.commit()
    events = jobs_repo.events(session, tenant_id=a.tenant_id, job_id=a.id, after_seq=2)
    assert [(e.seq, e.type, e.message, e.data) for e in events] == \
        [(3, "log", "m1", {"i": 1}), (4, "log", "m2", {"i": 2})]
    first = jobs_repo.events(session, tenant_id=a.tenant_id, job_id=a.id, limit=1)[0]
    assert (first.type, first.data["status"], first.attempt) == ("status", "running", 1)


def test_metrics_are_not_duplicated_when_a_resumed_run_adds_them_again(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    for epoch in (1, 2):
        assert lifecycle.add_metric(session, job_id=job.id, attempt=1, run="student", epoch=epoch,
                                    values={"val_acc": 0.5 + epoch / 10})
    assert lifecycle.add_metric(session, job_id=job.id, attempt=1, run="baseline", epoch=1, values={"val_acc": 0.4})
    session.commit()
    # the worker dies; attempt 2 resumes from the epoch-1 checkpoint and redoes epoch 2
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) == 2
    assert lifecycle.add_metric(session, job_id=job.id, attempt=2, run="student", epoch=2, values={"val_acc": 0.75})
    assert lifecycle.add_metric(session, job_id=job.id, attempt=2, run="student", epoch=2, values={"val_acc": 0.75})
    session.commit()
    rows = jobs_repo.metrics(session, tenant_id=job.tenant_id, job_id=job.id)
    assert [(m.run, m.epoch, m.values) for m in rows] == [
        ("baseline", 1, {"val_acc": 0.4}),
        ("student", 1, {"val_acc": 0.6}),
        ("student", 2, {"val_acc": 0.75}),  # replaced by the newest attempt
    ]
    with pytest.raises(ValueError):
        lifecycle.add_metric(session, job_id=job.id, attempt=2, run="teacher", epoch=1, values={})


def test_artifacts_replace_the_same_kind(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    for size in (10, 20):
        assert lifecycle.add_artifact(session, job_id=job.id, attempt=1, kind="checkpoint",
                                      storage_key=f"jobs/{job.id}/checkpoint.safetensors", bytes=size,
                                      sha256="a" * 64)
    assert lifecycle.add_artifact(session, job_id=job.id, attempt=1, kind="summary",
                                  storage_key=f"jobs/{job.id}/summary.json", bytes=5, sha256="b" * 64)
    session.commit()
    rows = jobs_repo.artifacts(session, tenant_id=job.tenant_id, job_id=job.id)
    assert [(a.kind, a.bytes) for a in rows] == [("checkpoint", 20), ("summary", 5)]
    assert jobs_repo.get_artifact(session, tenant_id=job.tenant_id, job_id=job.id, kind="summary").bytes == 5
    with pytest.raises(NotFound):
        jobs_repo.get_artifact(session, tenant_id=job.tenant_id, job_id=job.id, kind="student_onnx")


def test_set_progress(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    progress = {"phase": "training", "epoch": 1, "epochs": 10, "fraction": 0.1}
    assert lifecycle.set_progress(session, job_id=job.id, attempt=1, progress=progress)
    session.commit()
    assert jobs_repo.get(session, tenant_id=job.tenant_id, job_id=job.id).progress == progress


def test_reaper_finds_stale_queued_and_expired_leases(session, make_job):
    fresh_job, forgotten, running, expired = make_job(), make_job(), make_job(), make_job()
    now = utcnow()
    lifecycle.mark_enqueued(session, job_id=fresh_job.id, now=now + timedelta(seconds=100))
    lifecycle.mark_enqueued(session, job_id=running.id, now=now)
    lifecycle.mark_enqueued(session, job_id=expired.id, now=now)
    lifecycle.claim(session, job_id=running.id, lease_seconds=LEASE, worker="w", now=now + timedelta(seconds=100))
    lifecycle.claim(session, job_id=expired.id, lease_seconds=LEASE, worker="w", now=now)
    session.commit()
    # at now+120: `forgotten` was never enqueued (created ~now), `expired`'s lease ended at now+60
    found = lifecycle.find_jobs_to_enqueue(session, now=now + timedelta(seconds=120), queued_after_seconds=60)
    assert sorted(found) == sorted([forgotten.id, expired.id])
    assert lifecycle.find_jobs_to_enqueue(session, now=now + timedelta(seconds=10), queued_after_seconds=60) == []


def test_an_epoch_event_is_written_once_whichever_attempt_reports_it(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    for run in ("student", "baseline"):  # same epoch number, another run: a different event
        assert lifecycle.add_event_once(session, job_id=job.id, attempt=1, type="epoch", message=f"{run} 1",
                                        data={"run": run, "epoch": 1, "loss": 0.5}, key=("run", "epoch")) > 0
    assert lifecycle.add_event_once(session, job_id=job.id, attempt=1, type="checkpoint", message="ckpt 1",
                                    data={"run": "student", "epoch": 1}, key=("run", "epoch")) > 0
    session.commit()
    # attempt 1 died after reporting epoch 1 but before its checkpoint: attempt 2 trains it again
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) == 2
    assert lifecycle.add_event_once(session, job_id=job.id, attempt=2, type="epoch", message="again",
                                    data={"run": "student", "epoch": 1, "loss": 0.5}, key=("run", "epoch")) == 0
    assert lifecycle.add_event_once(session, job_id=job.id, attempt=2, type="epoch", message="student 2",
                                    data={"run": "student", "epoch": 2, "loss": 0.4}, key=("run", "epoch")) > 0
    # a stale attempt writes nothing, even an event that is not there yet
    assert lifecycle.add_event_once(session, job_id=job.id, attempt=1, type="epoch", message="stale",
                                    data={"run": "student", "epoch": 3}, key=("run", "epoch")) is None
    session.commit()
    events = [(e.type, e.data["run"], e.data["epoch"], e.attempt)
              for e in jobs_repo.events(session, tenant_id=job.tenant_id, job_id=job.id) if e.type != "status"]
    assert events == [("epoch", "student", 1, 1), ("epoch", "baseline", 1, 1), ("checkpoint", "student", 1, 1),
                      ("epoch", "student", 2, 2)]
    with pytest.raises(TypeError):
        lifecycle.add_event_once(session, job_id=job.id, attempt=2, type="epoch", message="x",
                                 data={"run": "student", "epoch": 1.5}, key=("run", "epoch"))


def test_the_cancel_flag_is_read_without_a_write_for_the_attempt_that_owns_the_job(session, make_job, tenant):
    job = make_job()
    assert lifecycle.cancel_requested(session, job_id=job.id, attempt=0) is False  # queued: no worker asks
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    session.commit()
    updated = fresh(session, job.id).updated_at
    assert lifecycle.cancel_requested(session, job_id=job.id, attempt=1) is False
    assert lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id) == "cancelling"
    session.commit()
    assert lifecycle.cancel_requested(session, job_id=job.id, attempt=1) is True
    assert lifecycle.cancel_requested(session, job_id=job.id, attempt=2) is False  # not that attempt's job
    session.commit()
    row = fresh(session, job.id)
    assert row.updated_at > updated and row.status == "cancelling"  # the request wrote; the reads did not
    lease = row.lease_until
    lifecycle.cancel_requested(session, job_id=job.id, attempt=1)
    session.commit()
    assert fresh(session, job.id).lease_until == lease  # a read, not a heartbeat


def test_every_event_has_a_level_and_a_failure_is_an_error(session, make_job):
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w")
    lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="plain")
    lifecycle.add_event(session, job_id=job.id, attempt=1, type="warning", message="near chance", level="warning")
    assert lifecycle.add_event_once(session, job_id=job.id, attempt=1, type="checkpoint", message="c",
                                    data={"run": "student", "epoch": 1}, key=("run", "epoch"), level="warning") == 4
    with pytest.raises(ValueError, match="level"):
        lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="x", level="debug")
    lifecycle.fail(session, job_id=job.id, attempt=1, code="diverged", message="nan")
    session.commit()
    events = jobs_repo.events(session, tenant_id=job.tenant_id, job_id=job.id)
    assert [(e.type, e.level) for e in events] == [("status", "info"), ("log", "info"), ("warning", "warning"),
                                                   ("checkpoint", "warning"), ("status", "error")]


@contextmanager
def sent(session, verb: str) -> Iterator[list[str]]:
    """The statements beginning with `verb` (UPDATE, INSERT...) that the session's engine sends meanwhile."""
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(verb):
            statements.append(statement)

    bind = session.get_bind()
    event.listen(bind, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(bind, "before_cursor_execute", count)


def test_a_transactions_first_fence_carries_the_attempts_writes_after_it(session, make_job):
    """A fence that passed holds the job row until the commit: the writes after it in the same
    transaction need no UPDATE of their own, unless they change the row; a stale attempt, a later
    transaction and a status change in between are fenced again."""
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    session.commit()
    with sent(session, "UPDATE") as updates:
        assert lifecycle.fence(session, job_id=job.id, attempt=1)
        assert lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="a")
        assert lifecycle.add_metric(session, job_id=job.id, attempt=1, run="student", epoch=1, values={"x": 1})
        assert lifecycle.add_artifact(session, job_id=job.id, attempt=1, kind="summary", storage_key="k",
                                      bytes=1, sha256="0" * 64)
        assert lifecycle.add_event_once(session, job_id=job.id, attempt=1, type="epoch", message="e",
                                        data={"run": "student", "epoch": 1}, key=("run", "epoch"))
        assert len(updates) == 1  # the fence's own
        assert lifecycle.set_progress(session, job_id=job.id, attempt=1, progress={"fraction": 0.5})
        assert len(updates) == 2  # progress changes the row
        session.commit()
        assert lifecycle.fence(session, job_id=job.id, attempt=1, progress={"fraction": 0.6})  # one UPDATE for both
        assert len(updates) == 3
        session.commit()
        assert fresh(session, job.id).progress == {"fraction": 0.6}
        assert lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="b")
        assert len(updates) == 4  # a new transaction is fenced again
        session.commit()

        # another attempt took the job: the old one's fence does not pass, nor its writes
        assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) == 2
        session.commit()
        assert not lifecycle.fence(session, job_id=job.id, attempt=1)
        assert lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="stale") is None
        session.rollback()

        # a status change in the transaction ends what the fence held
        assert lifecycle.fence(session, job_id=job.id, attempt=2)
        assert lifecycle.succeed(session, job_id=job.id, attempt=2, result={})
        assert lifecycle.add_event(session, job_id=job.id, attempt=2, type="log", message="after") is None
        session.commit()
    row = fresh(session, job.id)
    assert row.status == "succeeded" and row.progress == {"fraction": 0.6}
    messages = [e.message for e in jobs_repo.events(session, tenant_id=job.tenant_id, job_id=job.id)
                if e.type == "log"]
    assert messages == ["a", "b"]


def test_several_events_and_artifacts_are_one_insert_each(session, make_job):
    """add_events and add_artifacts (the worker's drained reports, its published files): the rows
    add_event and add_artifact would write, in order, in one INSERT each (after the fence)."""
    job = make_job()
    lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w1")
    assert lifecycle.add_artifact(session, job_id=job.id, attempt=1, kind="summary", storage_key="old",
                                  bytes=1, sha256="0" * 64)
    session.commit()
    made = [utcnow() - timedelta(seconds=s) for s in (3, 2, 1)]
    with sent(session, "INSERT") as inserts:
        assert lifecycle.fence(session, job_id=job.id, attempt=1)
        seqs = lifecycle.add_events(session, job_id=job.id, attempt=1, events=[
            {"type": "phase", "message": "phase loading", "data": {"phase": "loading"}, "now": made[0]},
            {"type": "data_loaded", "message": "rows", "now": made[1]},
            {"type": "warning", "message": "near chance", "level": "warning", "data": {"x": 1}, "now": made[2]}])
        assert seqs == [2, 3, 4]  # after the claim's status event
        assert len(inserts) == 1
        assert lifecycle.add_artifacts(session, job_id=job.id, attempt=1, artifacts=[
            {"kind": "summary", "storage_key": "new", "bytes": 2, "sha256": "1" * 64},
            {"kind": "metrics", "storage_key": "m", "bytes": 3, "sha256": "2" * 64}])
        assert len(inserts) == 2
        assert lifecycle.add_event(session, job_id=job.id, attempt=1, type="log", message="next") == 5
        assert lifecycle.add_events(session, job_id=job.id, attempt=1, events=[]) == []
        with pytest.raises(ValueError, match="level"):
            lifecycle.add_events(session, job_id=job.id, attempt=1, events=[{"type": "x", "message": "m",
                                                                           "level": "debug"}])
        with pytest.raises(ValueError, match="one artifact per kind"):
            lifecycle.add_artifacts(session, job_id=job.id, attempt=1, artifacts=[
                {"kind": "summary", "storage_key": "a", "bytes": 1, "sha256": "1" * 64}] * 2)
        session.commit()
    events = jobs_repo.events(session, tenant_id=job.tenant_id, job_id=job.id)
    rows = [(e.seq, e.type, e.level, e.data, e.attempt) for e in events]
    assert rows[1:] == [(2, "phase", "info", {"phase": "loading"}, 1), (3, "data_loaded", "info", None, 1),
                        (4, "warning", "warning", {"x": 1}, 1), (5, "log", "info", None, 1)]
    assert [e.created_at for e in events if 2 <= e.seq <= 4] == made
    arts = {a.kind: (a.storage_key, a.bytes) for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    assert arts == {"summary": ("new", 2), "metrics": ("m", 3)}  # the older summary replaced

    # a stale attempt writes none of them
    assert lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w2", now=later(LEASE + 1)) == 2
    session.commit()
    assert lifecycle.add_events(session, job_id=job.id, attempt=1, events=[{"type": "log", "message": "x"}]) is None
    assert lifecycle.add_artifacts(session, job_id=job.id, attempt=1, artifacts=[
        {"kind": "summary", "storage_key": "stale", "bytes": 1, "sha256": "3" * 64}]) is False
