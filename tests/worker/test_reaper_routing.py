"""The reaper publishes again with the API's routing rule: each forgotten job to its own queue, and
a queued job whose queue no live worker serves is left alone (on the real PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from jobs import jobs_repo, tenants_repo, workers_repo
from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings
from jobs.tables import Job, utcnow
from worker.reaper import reap_once


def test_the_reaper_routes_each_forgotten_job_to_its_queue(clean_pg, tmp_path):
    cfg = Settings(database_url=clean_pg, data_dir=tmp_path, queued_requeue_after=60)
    engine = make_engine(clean_pg)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as s:
            tenant = tenants_repo.get_or_create(s, name="acme")
            ids = {}
            for name, res in (("cpu", {"device": "cpu", "gpus": 0, "processes": 1}),
                              ("cuda1", {"device": "cuda", "gpus": 1, "processes": 1}),
                              ("cuda2", {"device": "cuda", "gpus": 2, "processes": 2})):
                ids[name] = jobs_repo.create(s, tenant_id=tenant.id, spec={"resources": res}, max_attempts=3).id
            # committed long ago and never published (the API died in between)
            s.execute(update(Job).values(created_at=utcnow() - timedelta(minutes=5)))
            workers_repo.register(s, name="gpu@a", hostname="a", pid=1, queues=["kd.cpu", "kd.cuda.1"],
                                  device="cuda", gpus=1)
            s.commit()

        sent = []
        enqueued = reap_once(sessions, lambda job_id, queue: sent.append((job_id, queue)), cfg)
        assert sorted(sent) == sorted([(ids["cpu"], "kd.cpu"), (ids["cuda1"], "kd.cuda.1")])
        assert set(enqueued) == {ids["cpu"], ids["cuda1"]}  # kd.cuda.2: nobody serves it, nothing sent

        with sessions() as s:  # a 2-GPU worker arrives: the next round sends that job too
            workers_repo.register(s, name="gpu2@b", hostname="b", pid=2, queues=["kd.cuda.2"], device="cuda", gpus=2)
            s.commit()
        sent.clear()
        reap_once(sessions, lambda job_id, queue: sent.append((job_id, queue)), cfg)
        assert sent == [(ids["cuda2"], "kd.cuda.2")]  # the others were just enqueued: not yet stale
    finally:
        engine.dispose()
