"""`python -m worker`: one Celery worker process (solo pool: one job at a time, no fork after CUDA),
consuming the queues its machine can serve (worker/presence.py), advertising them in `workers`,
with the reaper and the webhook sender running beside it in threads."""

from __future__ import annotations

import logging
import sys

from celery import signals

from jobs.settings import settings
from kdcore import checkpoint as kdcore_checkpoint
from worker.celery_app import app
from worker import context
from worker.presence import Presence, detect
from worker.reaper import start_reaper_thread
from worker.webhook_sender import WebhookSender

log = logging.getLogger("worker")
_presence: Presence | None = None


@signals.worker_ready.connect
def _on_ready(**_):
    if _presence is not None:
        _presence.start()
    start_reaper_thread(context.current())
    WebhookSender(context.current()).start()


@signals.worker_shutdown.connect
def _on_shutdown(**_):
    if _presence is not None:
        _presence.stop()


def warm_up() -> None:
    """Pay the one-off costs of a first job before the worker says it is ready, not on that job's
    clock (and its lease): PyTorch's optimizers import torch._dynamo on first use (2-3 s on a
    laptop CPU), the digits builtin imports scikit-learn (about 2 s), and the ONNX export imports
    onnx and onnxruntime and traces for the first time (about 1 s; bench/RESULTS.md, B6)."""
    import tempfile
    from pathlib import Path

    import torch

    from kdcore.data import load_builtin
    from kdcore.export import export_onnx
    from kdcore.models import build_model

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weight])
    weight.sum().backward()
    optimizer.step()
    load_builtin("digits")
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(build_model("mlp", {"hidden_sizes": [2]}, input_shape=(2,), num_classes=2), Path(tmp) / "warm.onnx")


def main() -> None:
    global _presence
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        caps = detect(settings)
    except ValueError as e:  # KD_WORKER_QUEUES names a queue this machine cannot serve
        log.error("%s", e)
        sys.exit(2)
    warm_up()
    # kdcore writes only into an attempt's scratch directory here; what is kept is copied to the
    # artifact store, which syncs it (kdcore/checkpoint.py, SYNC_WRITES)
    kdcore_checkpoint.SYNC_WRITES = False
    ctx = context.install(context.WorkerContext.build(settings))  # engine, store, name: once per process
    name = ctx.name
    _presence = Presence(ctx, caps)
    log.info("serving queues %s (device=%s, gpus=%d)", ",".join(caps.queues), caps.device, caps.gpus)
    app.worker_main(["worker", "--loglevel=INFO", "--pool=solo", "--concurrency=1", "-Q", ",".join(caps.queues),
                     f"--hostname={name}", "--without-gossip", "--without-mingle", "--without-heartbeat"])


if __name__ == "__main__":
    main()
