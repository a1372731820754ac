"""Which queue a job goes to, and which queues a worker can serve (pure functions, no I/O).

The routing rule (docs/ARCHITECTURE.md, "Queues and routing"):

    spec.resources.device = cpu            ->  kd.cpu
    spec.resources.device = cuda, gpus = N ->  kd.cuda.N

A worker on a machine with G CUDA devices can serve kd.cpu and kd.cuda.1 … kd.cuda.G (a job that
asks for N GPUs needs N on one machine, so a queue per GPU count keeps a 2-GPU job away from a
1-GPU machine); a machine without CUDA serves kd.cpu only. KD_WORKER_QUEUES narrows that list
(e.g. keep GPU machines for GPU jobs with `kd.cuda.1,kd.cuda.2`). A job stored before resources
existed has none and goes to kd.cpu.
"""

from __future__ import annotations

from typing import Any

CPU_QUEUE = "kd.cpu"
RUN_JOB_TASK = "kd.run_job"  # the one task: its message is a job id (API enqueuer, worker, reaper)
CUDA_QUEUE_PREFIX = "kd.cuda."


def cuda_queue(gpus: int) -> str:
    return f"{CUDA_QUEUE_PREFIX}{gpus}"


def resources_of(spec: dict[str, Any] | None) -> tuple[str, int]:
    """(device, gpus) of a stored, resolved job spec."""
    res = (spec or {}).get("resources") or {}
    device = res.get("device") or "cpu"
    gpus = int(res.get("gpus") or (1 if device == "cuda" else 0))
    return device, gpus


def queue_for(spec: dict[str, Any] | None) -> str:
    """The queue a job with this (resolved) spec is published to."""
    device, gpus = resources_of(spec)
    return cuda_queue(gpus) if device == "cuda" else CPU_QUEUE


def servable_queues(cuda_devices: int) -> list[str]:
    """Every queue a worker on a machine with `cuda_devices` CUDA devices can serve."""
    return [CPU_QUEUE, *(cuda_queue(n) for n in range(1, cuda_devices + 1))]


def choose_queues(cuda_devices: int, wanted: list[str] | None) -> list[str]:
    """The queues a worker listens to: all it can serve, or the ones KD_WORKER_QUEUES names.
    Naming one it cannot serve is refused (ValueError), rather than silently never taking a job."""
    servable = servable_queues(cuda_devices)
    if not wanted:
        return servable
    unknown = [q for q in wanted if q not in servable]
    if unknown:
        raise ValueError(f"KD_WORKER_QUEUES names {', '.join(unknown)}, which this machine cannot serve "
                         f"({cuda_devices} CUDA device(s)); it can serve {', '.join(servable)}")
    return list(dict.fromkeys(wanted))


def describe(spec: dict[str, Any] | None) -> str:
    device, gpus = resources_of(spec)
    return f"device={device} gpus={gpus}"
