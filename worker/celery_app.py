"""The worker's Celery app, configured for jobs whose truth is the database row (ARCHITECTURE.md).

- late acks + reject on worker lost: a message is acknowledged only after its task ran, so a
  killed worker's job is delivered again; the conditional claim makes any duplicate a no-op;
- prefetch 1 and the solo pool: one job per process (one process per GPU), and no CUDA is ever
  initialised in a parent that forks;
- JSON only: a message is a job id, never a pickled object;
- a broker that goes away is waited for, forever; the job that runs meanwhile carries on;
- queues by resources (jobs/routing.py): kd.cpu, kd.cuda.N; `python -m worker` consumes those its
  machine can serve (KD_WORKER_QUEUES narrows them) and advertises them in the `workers` table.
"""

from __future__ import annotations

from celery import Celery

from jobs.routing import CPU_QUEUE
from jobs.settings import settings

app = Celery("kd-worker", broker=settings.celery_broker_url, include=["worker.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=CPU_QUEUE,
    broker_connection_retry_on_startup=True,
    # A broker restart must not end the worker, nor the job it runs: reconnect for as long as it
    # takes, and let the running job finish (the database row is its truth; the reaper enqueues
    # again whatever messages the restart lost). Celery 6 would cancel it by default.
    broker_connection_retry=True,
    broker_connection_max_retries=None,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_send_task_events=False,
)


def redis_transport_options(visibility_timeout: int) -> dict:
    """Redis redelivers an unacknowledged message after `visibility_timeout` seconds (late acks keep
    a running job's message unacknowledged, so a job that runs longer gets a duplicate delivery,
    which the claim turns into a no-op).

    An idle worker looks for such messages on a timer: kombu's default sweep (a timer every 10 s,
    scanning on every 10th tick, so every ~100 s) is kept for long timeouts and shortened to a
    quarter of the timeout (at least 1 s) for short ones, so a redelivery comes roughly when the
    timeout says rather than up to 100 s later.
    """
    sweep = min(100.0, max(1.0, visibility_timeout / 4))
    interval = min(10.0, sweep)
    return {"visibility_timeout": visibility_timeout,
            "unacked_restore_interval": interval,
            "unacked_restore_throttle": max(1, round(sweep / interval))}


# The embedded mode's SQLite broker (kombu's SQLAlchemy transport) has no way to wake a consumer: an
# idle worker looks for a message every `polling_interval`, 1 s by default, so a job waited up to a
# second before it started (bench/RESULTS.md, B5: 1.08 s median). A tenth of a second makes the wait
# short at the cost of ten small queries a second on the broker's file while idle. kombu reads the
# interval from the transport options, but its SQLAlchemy channel hands every option it does not
# know to create_engine, which refuses this one, so it is set on the transport class, which only
# this process's consumer uses.
EMBEDDED_BROKER_POLL_SECONDS = 0.1

if settings.celery_broker_url.startswith("sqla+"):
    from kombu.transport import sqlalchemy as _sqla_transport

    _sqla_transport.Transport.polling_interval = EMBEDDED_BROKER_POLL_SECONDS

if settings.celery_broker_url.startswith(("redis://", "rediss://")):
    # (The SQLAlchemy transport of the embedded mode passes transport options to create_engine, so
    # they are Redis-only.)
    app.conf.broker_transport_options = redis_transport_options(settings.broker_visibility_timeout)
