"""jobs/workers_repo.py and jobs/routing.py on SQLite and PostgreSQL: registration and liveness,
the routing rule, queue positions and the reason a queued job gives when nobody serves it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs import routing, workers_repo
from jobs.tables import RUNNING, Job, Worker, utcnow

CPU = {"resources": {"device": "cpu", "gpus": 0, "processes": 1}}
CUDA2 = {"resources": {"device": "cuda", "gpus": 2, "processes": 2}}


def _spec(res):
    return {"teacher": {"file_id": "file_none"}, **res}


@pytest.mark.parametrize("spec, queue", [
    (CPU, "kd.cpu"), ({"resources": {"device": "cpu", "gpus": 0, "processes": 2}}, "kd.cpu"),
    ({"resources": {"device": "cuda", "gpus": 1, "processes": 1}}, "kd.cuda.1"), (CUDA2, "kd.cuda.2"),
    ({}, "kd.cpu"),  # stored before resources existed
])
def test_the_routing_rule(spec, queue):
    assert routing.queue_for(_spec(spec)) == queue


def test_the_queues_a_machine_can_serve_and_narrowing_them():
    assert routing.choose_queues(0, None) == ["kd.cpu"]
    assert routing.choose_queues(2, None) == ["kd.cpu", "kd.cuda.1", "kd.cuda.2"]
    assert routing.choose_queues(2, ["kd.cuda.2", "kd.cuda.1"]) == ["kd.cuda.2", "kd.cuda.1"]
    with pytest.raises(ValueError, match="kd.cuda.1.*cannot serve"):
        routing.choose_queues(0, ["kd.cpu", "kd.cuda.1"])


def test_register_heartbeat_and_liveness(session):
    t0 = utcnow()
    workers_repo.register(session, name="w1@a", hostname="a", pid=1, queues=["kd.cpu"], device="cpu", gpus=0, now=t0)
    workers_repo.register(session, name="w2@b", hostname="b", pid=2, queues=["kd.cpu", "kd.cuda.1"], device="cuda",
                          gpus=1, now=t0)
    session.commit()
    later = t0 + timedelta(seconds=25)
    assert workers_repo.heartbeat(session, name="w1@a", now=later)
    session.commit()
    assert [w.name for w in workers_repo.live(session, stale_seconds=30, now=later)] == ["w1@a", "w2@b"]
    # w2 stopped beating: 31 s after its last beat it no longer counts, and neither does its queue
    assert workers_repo.live_queues(session, stale_seconds=30, now=t0 + timedelta(seconds=31)) == {"kd.cpu"}
    workers_repo.deregister(session, name="w1@a")
    session.commit()
    assert not workers_repo.heartbeat(session, name="w1@a")
    # a worker registering with the same name replaces its row; rows unseen for a day are forgotten
    workers_repo.register(session, name="w3@c", hostname="c", pid=3, queues=["kd.cpu"], device="cpu", gpus=0,
                          now=t0 + workers_repo.FORGET_AFTER + timedelta(seconds=1))
    session.commit()
    assert [w.name for w in session.query(Worker).all()] == ["w3@c"]


def test_queue_positions_count_older_queued_jobs_on_the_same_queue(session, make_job):
    jobs = [make_job(spec=_spec(CPU)) for _ in range(3)]
    gpu_job = make_job(spec=_spec(CUDA2))
    legacy = make_job(spec=_spec({}))  # no resources: kd.cpu, behind the three
    assert [workers_repo.queue_position(session, job=j) for j in jobs] == [0, 1, 2]
    assert workers_repo.queue_position(session, job=gpu_job) == 0  # another queue
    assert workers_repo.queue_position(session, job=legacy) == 3
    session.execute(update(Job).where(Job.id == jobs[0].id).values(status=RUNNING))  # no longer waiting
    session.commit()
    assert [workers_repo.queue_position(session, job=j) for j in jobs[1:]] == [0, 1]


def test_a_queued_job_that_no_live_worker_serves_says_so(session, make_job):
    gpu_job, cpu_job = make_job(spec=_spec(CUDA2)), make_job(spec=_spec(CPU))
    workers_repo.register(session, name="cpu@a", hostname="a", pid=1, queues=["kd.cpu"], device="cpu", gpus=0)
    session.commit()
    status = workers_repo.queue_status(session, job=gpu_job, stale_seconds=30)
    assert status.queue == "kd.cuda.2" and status.position == 0
    assert status.waiting_reason.startswith("no live worker serves device=cuda gpus=2 (queue kd.cuda.2)")
    assert workers_repo.queue_status(session, job=cpu_job, stale_seconds=30).waiting_reason is None
