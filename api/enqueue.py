"""A send-only Celery client: the API wakes workers by task *name* and never imports worker code."""

from __future__ import annotations

from celery import Celery

from jobs.routing import CPU_QUEUE, RUN_JOB_TASK


class Enqueuer:
    def __init__(self, broker_url: str):
        self.app = Celery("kd-api", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             broker_connection_retry_on_startup=True)
        if broker_url.startswith(("redis://", "rediss://")):
            # Fail a publish within seconds when Redis is down (the reaper enqueues it later)
            # instead of holding the request; the SQLAlchemy transport takes no such option.
            self.app.conf.broker_transport_options = {"max_retries": 2}

    def enqueue_job(self, job_id: str, queue: str = CPU_QUEUE) -> None:
        """Publish the job id to its queue (jobs.routing.queue_for(spec)); the database row (already
        committed) is the truth."""
        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)

    def ping(self) -> None:
        """Raise when the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
