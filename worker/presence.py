"""What this worker can serve, and its row in `workers` that tells everyone it is alive.

At start the worker works out its device kind and GPU count (torch.cuda.is_available() and
device_count(): no CUDA context is created, and the solo pool never forks), picks its queues
(jobs/routing.py; KD_WORKER_QUEUES narrows them), registers, and a daemon thread refreshes
`last_seen` every KD_WORKER_HEARTBEAT_SECONDS. A clean stop removes the row; a killed worker's row
goes stale after KD_WORKER_STALE_SECONDS, and the API stops counting its queues as served.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from jobs import workers_repo
from jobs.routing import choose_queues
from jobs.settings import Settings
from worker.context import WorkerContext

log = logging.getLogger("worker.presence")


@dataclass(frozen=True)
class Capabilities:
    device: str  # "cuda" or "cpu"
    gpus: int
    queues: list[str]


def detect(cfg: Settings) -> Capabilities:
    """This machine's device kind and GPUs, and the queues to consume (ValueError when
    KD_WORKER_QUEUES names one it cannot serve)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Capabilities("cuda" if gpus else "cpu", gpus, choose_queues(gpus, cfg.worker_queue_list))


class Presence:
    """This worker's row in `workers`: register, beat in a thread, deregister."""

    def __init__(self, ctx: WorkerContext, caps: Capabilities):
        self.cfg, self.caps, self.name, self.sessions = ctx.cfg, caps, ctx.name, ctx.sessions
        self.stopped = threading.Event()

    def _register(self) -> None:
        with self.sessions() as s:
            workers_repo.register(s, name=self.name, hostname=socket.gethostname(), pid=os.getpid(),
                                  queues=self.caps.queues, device=self.caps.device, gpus=self.caps.gpus)
            s.commit()

    def start(self) -> None:
        self._register()
        log.info("worker %s registered: device=%s gpus=%d queues=%s", self.name, self.caps.device, self.caps.gpus,
                 ",".join(self.caps.queues))
        threading.Thread(target=self._loop, name="presence", daemon=True).start()

    def _loop(self) -> None:
        while not self.stopped.wait(self.cfg.worker_heartbeat_seconds):
            try:
                with self.sessions() as s:
                    alive = workers_repo.heartbeat(s, name=self.name)
                    s.commit()
                if not alive:  # the row was forgotten (the database was down for a day): come back
                    self._register()
            except Exception:  # the database is away: try again next beat
                log.exception("worker heartbeat failed")

    def stop(self) -> None:
        self.stopped.set()
        try:
            with self.sessions() as s:
                workers_repo.deregister(s, name=self.name)
                s.commit()
        except Exception:  # the row goes stale on its own
            log.exception("could not deregister worker %s", self.name)
