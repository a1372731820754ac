"""Concurrent writers on PostgreSQL (threads, one session each): one claim wins, and events from
two writers of the same attempt get unique, gap-free sequence numbers."""

from __future__ import annotations

import threading

from sqlalchemy import select

from jobs import jobs_repo, lifecycle, tenants_repo
from jobs.db import make_sessionmaker
from jobs.tables import JobEvent

WRITERS = 2
EVENTS_PER_WRITER = 40


def run_together(n: int, work) -> list:
    """Run work(i) in n threads released at the same moment; their results in order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def make_queued_job(factory) -> str:
    with factory() as session:
        tenant = tenants_repo.get_or_create(session, name="acme")
        job = jobs_repo.create(session, tenant_id=tenant.id, spec={}, max_attempts=3)
        session.commit()
        return job.id


def test_only_one_of_many_concurrent_claims_wins(pg_engine):
    factory = make_sessionmaker(pg_engine)
    job_id = make_queued_job(factory)

    def claim(i: int):
        with factory() as session:
            attempt = lifecycle.claim(session, job_id=job_id, lease_seconds=60, worker=f"w{i}")
            session.commit()
            return attempt

    results = run_together(6, claim)
    assert sorted(results, key=lambda r: r is None) == [1] + [None] * 5


def test_concurrent_event_writers_get_unique_increasing_seqs(pg_engine):
    factory = make_sessionmaker(pg_engine)
    job_id = make_queued_job(factory)
    with factory() as session:
        attempt = lifecycle.claim(session, job_id=job_id, lease_seconds=60, worker="w")
        session.commit()

    def write(i: int) -> list[int]:
        seqs = []
        with factory() as session:
            for n in range(EVENTS_PER_WRITER):
                seq = lifecycle.add_event(session, job_id=job_id, attempt=attempt, type="log",
                                          message=f"writer {i} event {n}")
                session.commit()
                seqs.append(seq)
        return seqs

    per_writer = run_together(WRITERS, write)
    for seqs in per_writer:
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # increasing for each writer
    with factory() as session:
        stored = list(session.scalars(select(JobEvent.seq).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    total = 1 + WRITERS * EVENTS_PER_WRITER  # the claim's status event, then the writers'
    assert stored == list(range(1, total + 1))
    assert sorted(s for seqs in per_writer for s in seqs) == list(range(2, total + 1))
