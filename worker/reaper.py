"""The reaper: finds jobs the broker forgot and enqueues them again.

A job committed but never enqueued (the API died in between), a message lost with a broker
restart, a worker killed mid-job (its lease expires): the database row says the job should be
running, so the reaper sends its id again, to the queue its resources route it to (jobs/routing.py,
the rule the API publishes with). Claims make any duplicate harmless. A queued job whose queue no
live worker serves is left alone (its first message still waits in the broker, and GET /v1/jobs/{id}
says why it waits); the reaper sends it again once a worker for that queue is live, in case the
broker lost that message.
Runs as a thread inside every worker (`python -m worker`) or alone (`python -m worker.reaper`).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from jobs import jobs_repo, lifecycle, workers_repo
from jobs.routing import RUN_JOB_TASK, queue_for
from jobs.settings import Settings
from jobs.tables import QUEUED
from worker.context import WorkerContext, current as current_context

log = logging.getLogger("worker.reaper")


def reap_once(sessions, send, cfg: Settings) -> list[str]:
    """Enqueue every job that should be moving but is not, each to its queue: `send(job_id, queue)`;
    returns their ids."""
    now = datetime.now(timezone.utc)
    with sessions() as s:
        found = lifecycle.find_jobs_to_enqueue(s, now=now, queued_after_seconds=cfg.queued_requeue_after)
        status_and_spec = jobs_repo.status_and_spec(s, job_ids=found)
        served = workers_repo.live_queues(s, stale_seconds=cfg.worker_stale_seconds, now=now)
        ids = []
        for job_id in found:
            status, spec = status_and_spec[job_id]
            queue = queue_for(spec)
            if status == QUEUED and queue not in served:
                continue  # nobody could take it; another message would only pile up in the broker
            send(job_id, queue)
            lifecycle.mark_enqueued(s, job_id=job_id)
            ids.append(job_id)
        s.commit()
    if ids:
        log.info("reaper enqueued %d job(s) again: %s", len(ids), ", ".join(ids))
    return ids


def start_reaper_thread(ctx: WorkerContext | None = None) -> threading.Event:
    """Start the reaper loop in a daemon thread; set the returned event to stop it."""
    ctx = ctx or current_context()
    cfg, sessions = ctx.cfg, ctx.sessions
    stop = threading.Event()
    from worker.celery_app import app

    def send(job_id: str, queue: str) -> None:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)

    def loop() -> None:
        while not stop.wait(cfg.reaper_interval):
            try:
                reap_once(sessions, send, cfg)
            except Exception:  # the database or broker is down: try again next round
                log.exception("reaper round failed")

    threading.Thread(target=loop, name="reaper", daemon=True).start()
    return stop


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    start_reaper_thread().wait()
