"""R7: over random sequences of claims, heartbeats, cancel requests, outcomes and lease expiries
(moving `now`), a job's status never goes backwards, a terminal status never changes, and only
the newest attempt can write. SQLite, one database for all examples, a new job per example."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import jobs_repo, lifecycle, tenants_repo
from jobs.errors import Conflict
from jobs.tables import TERMINAL_STATUSES, utcnow

LEASE = 60
RANK = {"queued": 0, "running": 1, "cancelling": 2, "succeeded": 3, "failed": 3, "cancelled": 3}

# An operation is (name, which attempt it writes as: 0 = the newest, 1 = the one before, …).
operations = st.lists(
    st.tuples(
        st.sampled_from(["claim", "heartbeat", "cancel", "fail", "succeed", "finish_cancelled",
                         "expire", "fail_exhausted", "progress"]),
        st.integers(min_value=0, max_value=2),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None, database=None)  # no .hypothesis/ in the repo
@given(ops=operations, max_attempts=st.integers(min_value=1, max_value=3))
def test_status_never_goes_backwards(sqlite_module_factory, ops, max_attempts):
    with sqlite_module_factory() as session:
        tenant = tenants_repo.get_or_create(session, name="property")
        job = jobs_repo.create(session, tenant_id=tenant.id, spec={}, max_attempts=max_attempts)
        session.commit()
        now = utcnow()
        attempts: list[int] = []  # attempts handed out by claim, oldest first
        status = "queued"

        for name, back in ops:
            mine = attempts[-1 - back] if back < len(attempts) else 0
            newest = bool(attempts) and mine == attempts[-1]
            before = status
            if name == "claim":
                got = lifecycle.claim(session, job_id=job.id, lease_seconds=LEASE, worker="w", now=now)
                if got is not None:
                    assert got == len(attempts) + 1 <= max_attempts
                    attempts.append(got)
            elif name == "heartbeat":
                alive = lifecycle.heartbeat(session, job_id=job.id, attempt=mine, lease_seconds=LEASE, now=now).alive
                assert alive == (newest and before in ("running", "cancelling"))
            elif name == "cancel":
                try:
                    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job.id, now=now)
                except Conflict:
                    assert before in TERMINAL_STATUSES
            elif name == "fail":
                ok = lifecycle.fail(session, job_id=job.id, attempt=mine, code="x", message="y", now=now)
                assert ok == (newest and before in ("running", "cancelling"))
            elif name == "succeed":
                ok = lifecycle.succeed(session, job_id=job.id, attempt=mine, result={}, now=now)
                assert ok == (newest and before in ("running", "cancelling"))
            elif name == "finish_cancelled":
                ok = lifecycle.finish_cancelled(session, job_id=job.id, attempt=mine, now=now)
                assert ok == (newest and before == "cancelling")
            elif name == "progress":
                ok = lifecycle.set_progress(session, job_id=job.id, attempt=mine, progress={"step": 1}, now=now)
                assert ok == (newest and before in ("running", "cancelling"))
            elif name == "expire":
                now += timedelta(seconds=LEASE + 1)
            elif name == "fail_exhausted":
                lifecycle.fail_exhausted(session, job_id=job.id, now=now)
            session.commit()

            row = jobs_repo.get(session, tenant_id=tenant.id, job_id=job.id)
            status = row.status
            assert RANK[status] >= RANK[before], f"{name}: {before} -> {status}"
            if before in TERMINAL_STATUSES:
                assert status == before, f"{name}: terminal {before} -> {status}"
            assert row.attempt == len(attempts) <= max_attempts
