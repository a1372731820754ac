"""The worker's reports (phase and informational events, progress) wait up to REPORT_DELAY_SECONDS to
be committed with the next write that must go at once, or by the heartbeat thread: fewer commits per
job, the same rows, in the order and with the times they were made (worker/runner.py)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, select

from jobs import lifecycle
from jobs.tables import Job, JobEvent
from tests.utils import submit
from worker import runner
from worker.context import WorkerContext
from worker.runner import JobRun, run_job

pytestmark = pytest.mark.slow


def _events(ctx: WorkerContext, job_id: str) -> list[JobEvent]:
    with ctx.sessions() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def claimed_run(client, settings, digits_teacher) -> tuple[WorkerContext, str, JobRun]:
    """A job submitted and claimed by a worker context of these settings, with its JobRun (not run)."""
    job_id = submit(client, digits_teacher)["id"]
    ctx = WorkerContext.build(settings)
    with ctx.sessions() as s:
        attempt = lifecycle.claim(s, job_id=job_id, lease_seconds=60, worker=ctx.name)
        s.commit()
    return ctx, job_id, JobRun(job_id, attempt, cfg=ctx.cfg, sessions=ctx.sessions, store=ctx.store, name=ctx.name)


def test_a_jobs_reports_ride_with_the_writes_that_must_go_at_once(client, settings, digits_teacher, monkeypatch):
    monkeypatch.setattr(runner, "REPORT_DELAY_SECONDS", 3600.0)  # no report is written on its own
    job_id = submit(client, digits_teacher, epochs=2, batch_size=64)["id"]
    # no lease renewal during the job either: only the job's own writes commit
    ctx = WorkerContext.build(settings.model_copy(update={"lease_seconds": 3600, "heartbeat_seconds": 3000}))
    commits, updates, event_inserts = [], [], []
    event.listen(ctx.sessions.kw["bind"], "commit", lambda conn: commits.append(1))
    event.listen(ctx.sessions.kw["bind"], "before_cursor_execute",
                 lambda conn, cursor, statement, *a: updates.append(1) if statement.startswith("UPDATE jobs") else None)
    event.listen(ctx.sessions.kw["bind"], "before_cursor_execute", lambda conn, cursor, statement, *a:
                 event_inserts.append(1) if statement.startswith("INSERT INTO job_events") else None)

    assert run_job(job_id, ctx) == "succeeded"

    # the claim, each epoch's report (2 epochs of the student, 2 of the baseline), the success: the
    # phase, data, progress and checkpoint reports went with them, not one commit each
    assert len(commits) == 1 + 2 * 2 + 1
    # and each of those transactions updates the job row once (the claim; the others' fence, with the
    # progress) and the success once more (its status): the events, metrics and artifacts after a
    # fence need no UPDATE of their own
    assert len(updates) == 1 + 2 * 2 + 1 + 1
    # the waiting plain events of a transaction go in one INSERT, the progress reports between them
    # notwithstanding; a checkpoint's event (written once per run and epoch) and each epoch's go alone:
    # the claim's status; per epoch the waiting events (the first epoch of each run: its phases), the
    # previous checkpoint's event, its own event; at the end the last checkpoint's, the waiting events,
    # the result and the status
    assert len(event_inserts) == 1 + (1 + 1) + (1 + 1) + (1 + 1 + 1) + (1 + 1) + (1 + 1 + 1 + 1)
    events = _events(ctx, job_id)
    types = [e.type if e.type != "phase" else f"phase {e.data['phase']}" for e in events]
    assert types[:4] == ["status", "claimed", "phase loading", "data_loaded"], types
    order = ["phase caching_teacher", "teacher_cached", "phase training", "epoch", "checkpoint", "phase baseline",
             "phase evaluating", "phase exporting", "result"]
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order), types
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # every report keeps the time it was made, not the time it was committed
    times = [e.created_at for e in events]
    assert times == sorted(times)
    with ctx.sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.progress["fraction"] == 1.0


def test_a_report_with_nothing_after_it_is_written_by_the_heartbeat_thread(client, settings, digits_teacher):
    ctx, job_id, job = claimed_run(client, settings, digits_teacher)
    heartbeat = threading.Thread(target=job._heartbeat_loop, daemon=True)
    heartbeat.start()
    try:
        made = time.monotonic()
        job.on_phase("caching_teacher")  # and then the job's thread is busy for a long time
        deadline = made + 10
        while not any(e.type == "phase" for e in _events(ctx, job_id)) and time.monotonic() < deadline:
            time.sleep(0.02)
        written = time.monotonic() - made
        assert any(e.type == "phase" and e.data == {"phase": "caching_teacher"} for e in _events(ctx, job_id))
        assert written >= runner.REPORT_DELAY_SECONDS * 0.9  # it waited for company first
        with ctx.sessions() as s:
            assert s.get(Job, job_id).progress["phase"] == "caching_teacher"
    finally:
        job.stop_heartbeat.set()
        job.wake.set()
        heartbeat.join(timeout=5)


def test_a_report_fenced_out_in_the_heartbeat_thread_stops_the_attempt(client, settings, digits_teacher):
    ctx, job_id, job = claimed_run(client, settings, digits_teacher)
    job.on_event("data_loaded", "a report")
    with ctx.sessions() as s:  # another attempt took the job meanwhile
        s.get(Job, job_id).attempt = job.attempt + 1
        s.commit()
    job._flush_reports()
    assert job.lease_lost.is_set() and job.should_stop()
    assert not [e for e in _events(ctx, job_id) if e.type == "data_loaded"]
