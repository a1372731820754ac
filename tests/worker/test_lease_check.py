"""The check a checkpoint's upload or delete makes just before it takes effect (worker/runner.py,
JobRun._hold_lease): on the worker's clock while the lease as last renewed has more than
LEASE_MARGIN_SECONDS left; past that, one fenced renewal, which a re-claimed job refuses."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import event, update

from jobs import lifecycle
from jobs.errors import LeaseLost
from jobs.tables import Job, utcnow
from tests.worker.test_reports import claimed_run
from worker import runner

pytestmark = pytest.mark.slow


def _statements(ctx) -> list[str]:
    seen: list[str] = []
    event.listen(ctx.sessions.kw["bind"], "before_cursor_execute",
                 lambda conn, cursor, statement, *a: seen.append(statement))
    return seen


def _reclaim(ctx, job_id: str) -> int:
    """The lease runs out and another worker claims the job: its attempt number."""
    with ctx.sessions() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_until=utcnow() - timedelta(seconds=1)))
        attempt = lifecycle.claim(s, job_id=job_id, lease_seconds=60, worker="successor")
        s.commit()
    return attempt


def _lease_until(ctx, job_id: str):
    with ctx.sessions() as s:
        return s.get(Job, job_id).lease_until


def test_a_fresh_lease_is_checked_on_the_clock_alone(client, settings, digits_teacher):
    ctx, job_id, job = claimed_run(client, settings, digits_teacher)
    seen = _statements(ctx)
    job._hold_lease()
    assert seen == []  # no round trip while the lease has time left


def test_a_lease_near_its_end_is_renewed_first(client, settings, digits_teacher):
    ctx, job_id, job = claimed_run(client, settings, digits_teacher)
    job.leased_at = time.monotonic() - ctx.cfg.lease_seconds + runner.LEASE_MARGIN_SECONDS / 2
    before = _lease_until(ctx, job_id)
    seen = _statements(ctx)
    job._hold_lease()
    assert [s for s in seen if s.startswith("UPDATE jobs")]  # the renewal
    assert _lease_until(ctx, job_id) > before and time.monotonic() - job.leased_at < 5
    assert not job.lease_lost.is_set()


def test_an_attempt_whose_job_was_reclaimed_is_refused_once_its_lease_ran_out(client, settings, digits_teacher):
    """The stalled worker's case (tests/reliability/test_never_twice.py): it wakes after its lease
    ran out and another worker took the job; its checkpoint must not reach the store."""
    ctx, job_id, job = claimed_run(client, settings, digits_teacher)
    assert _reclaim(ctx, job_id) == job.attempt + 1
    job.leased_at = time.monotonic() - ctx.cfg.lease_seconds - 10  # asleep past its lease
    with pytest.raises(LeaseLost):
        job._hold_lease()
    assert job.lease_lost.is_set()
    with pytest.raises(LeaseLost):  # and from then on without asking
        job._hold_lease()


def test_a_stale_attempts_checkpoint_stays_out_of_the_store(client, settings, digits_teacher, tmp_path):
    """Through the mirror the job uses: a refused push uploads nothing and deletes nothing."""
    from kdcore.checkpoint import save_checkpoint
    from worker.checkpoint_mirror import CheckpointMirror

    ctx, job_id, job = claimed_run(client, settings, digits_teacher)
    prefix = f"jobs/{job_id}/checkpoints"
    mirror = CheckpointMirror(ctx.store, prefix=prefix, local_dir=tmp_path / "ckpt", before_write=job._hold_lease)
    for epoch in (1, 2):
        save_checkpoint(mirror.local_dir / "student", epoch=epoch, state={"epoch": epoch})
        mirror.push()
    held = ctx.store.list_keys(prefix)
    _reclaim(ctx, job_id)
    job.leased_at -= ctx.cfg.lease_seconds
    save_checkpoint(mirror.local_dir / "student", epoch=3, state={"epoch": 3})
    with pytest.raises(LeaseLost):
        mirror.push()
    assert ctx.store.list_keys(prefix) == held
