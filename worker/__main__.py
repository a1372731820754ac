"""`python -m worker`: one Celery worker process (solo pool: one job at a time, no fork after CUDA),
with the reaper running beside it in a thread."""

from __future__ import annotations

import logging
import os
import socket

from celery import signals

from worker.celery_app import JOBS_QUEUE, app
from worker.reaper import start_reaper_thread


@signals.worker_ready.connect
def _start_reaper(**_):
    start_reaper_thread()


def warm_up() -> None:
    """Pay the one-off costs of a first job before the worker says it is ready, not on that job's
    clock (and its lease): PyTorch's optimizers import torch._dynamo on first use (2-3 s on a
    laptop CPU) and the digits builtin imports scikit-learn (about 2 s)."""
    import torch

    from kdcore.data import load_builtin

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weight])
    weight.sum().backward()
    optimizer.step()
    load_builtin("digits")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warm_up()
    app.worker_main(["worker", "--loglevel=INFO", "--pool=solo", "--concurrency=1", "-Q", JOBS_QUEUE,
                     f"--hostname=kd-worker-{os.getpid()}@{socket.gethostname()}", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])


if __name__ == "__main__":
    main()
