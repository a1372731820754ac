"""The reaper: finds jobs the broker forgot and enqueues them again.

A job committed but never enqueued (the API died in between), a message lost with a broker
restart, a worker killed mid-job (its lease expires): the database row says the job should be
running, so the reaper sends its id again. Claims make any duplicate harmless.
Runs as a thread inside every worker (`python -m worker`) or alone (`python -m worker.reaper`).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from jobs import lifecycle
from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings, settings as process_settings

log = logging.getLogger("worker.reaper")


def reap_once(sessions, send, cfg: Settings) -> list[str]:
    """Enqueue every job that should be moving but is not; returns their ids."""
    with sessions() as s:
        ids = lifecycle.find_jobs_to_enqueue(s, now=datetime.now(timezone.utc),
                                             queued_after_seconds=cfg.queued_requeue_after)
        for job_id in ids:
            send(job_id)
            lifecycle.mark_enqueued(s, job_id=job_id)
        s.commit()
    if ids:
        log.info("reaper enqueued %d job(s) again: %s", len(ids), ", ".join(ids))
    return ids


def start_reaper_thread(cfg: Settings | None = None) -> threading.Event:
    """Start the reaper loop in a daemon thread; set the returned event to stop it."""
    cfg = cfg or process_settings
    stop = threading.Event()
    sessions = make_sessionmaker(make_engine(cfg.db_url))
    from worker.celery_app import JOBS_QUEUE, app

    def send(job_id: str) -> None:
        app.send_task("kd.run_job", args=[job_id], queue=JOBS_QUEUE)

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
