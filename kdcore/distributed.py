"""Data-parallel training on one machine: N processes, torch.distributed DDP (pure PyTorch).

`train_data_parallel` is `trainer.train` for `processes` > 1. The calling process is rank 0: it
runs `train` with the caller's callbacks, so whoever called it (the CLI, the service's worker) stays
the one that reports progress, metrics and events and writes checkpoints. Ranks 1..N-1 are spawned
(`spawn`, never `fork`: no CUDA state is copied into a child) and run the same loop with no
callbacks. Backend: NCCL on CUDA (rank r on cuda:r), gloo on CPU.

What each rank does (trainer.train with `rank=`, a kdcore.ranks.Rank):
- every global batch (the spec's batch_size, in the order IndexBatcher gives) is split into
  `processes` contiguous shards, rank r taking shard r, so the same samples make up each step as
  in a single-process run;
- the student is wrapped in DistributedDataParallel, which averages gradients over the ranks;
  each rank scales its shard's mean loss by shard/global size × ranks, so that average is the
  gradient of the global batch's mean loss, exactly the single-process objective (up to float
  rounding), even for an uneven last batch;
- teacher logits come from the shared cache, row for row (a live teacher is refused: the spec
  asks for augment none);
- the per-step sums (loss, hard, soft, correct) are all-reduced, so rank 0 reports the global
  batch; cancellation is rank 0's `should_stop()` shared with every rank before each step;
- validation runs on every rank (identical weights, so identical answers and identical early
  stopping decisions); rank 0 alone writes checkpoints; every rank reads one to resume.

Tensors reach the children through torch.multiprocessing (shared memory: the data and teacher
logits are shared read-only, each child gets its own copy of the model); nothing read from a
user's file is unpickled. What does not match a single-process run: dropout masks (each rank
draws its own) and BatchNorm statistics (each rank normalises its shard with the shard's statistics,
and the running averages come from rank 0's shards; no SyncBatchNorm, so the saved student keeps
plain BatchNorm layers).
"""

from __future__ import annotations

import copy
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdcore.errors import SpecError
from kdcore.ranks import Rank
from kdcore.trainer import train

# A rank that waits longer than this at a collective (a peer died or hangs) fails the run.
COLLECTIVE_TIMEOUT_SECONDS = 300
JOIN_TIMEOUT_SECONDS = 60  # how long rank 0 waits for the other ranks to exit after training


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def train_data_parallel(model: torch.nn.Module, *, processes: int, device: torch.device, **train_kwargs):
    """`trainer.train(model, device=device, **train_kwargs)` run by `processes` ranks; returns
    rank 0's TrainResult, and `model` (rank 0's) ends trained, as with `train`."""
    if processes < 2:
        return train(model, device=device, **train_kwargs)
    if train_kwargs.get("live_teacher") is not None:
        raise SpecError("data-parallel training needs cached teacher logits (augment none)",
                        field="resources.processes")
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if available < processes:
            raise SpecError(f"asks for {processes} GPUs but this machine has {available}", field="resources.gpus")
        device = torch.device("cuda", 0)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    backend = backend_for(device)
    child_kwargs = {k: v for k, v in train_kwargs.items() if k != "callbacks"}
    # CPU ranks share the machine's cores: each gets its share of this process's intra-op threads
    # (not all of them, N times over). A CUDA rank keeps the caller's count.
    threads = torch.get_num_threads()
    rank_threads = max(1, threads // processes) if device.type == "cpu" else threads
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_rank_main, name=f"kd-rank-{rank}", daemon=True,
                            # A copy each: torch.multiprocessing moves a tensor's storage into shared
                            # memory, and ranks stepping one shared set of weights would train it N times.
                            args=(rank, processes, init_method, backend, device.type, copy.deepcopy(model),
                                  child_kwargs, rank_threads))
                for rank in range(1, processes)]
    for child in children:  # spawn pickles the arguments here: the model as it is before training
        child.start()
    try:
        dist.init_process_group(backend, init_method=init_method, rank=0, world_size=processes,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
        torch.set_num_threads(rank_threads)
        try:
            result = train(model, device=device, rank=Rank(0, processes), **train_kwargs)
            # Ordered teardown: every rank has left its last collective, and the other ranks have torn
            # down their groups and exited, before rank 0 (whose process hosts the rendezvous store)
            # destroys its own. Tearing down at once killed a rank now and then mid-teardown
            # ("terminate called without an active exception", exit -6).
            _barrier(device)
            for child in children:
                child.join(timeout=JOIN_TIMEOUT_SECONDS)
        finally:
            dist.destroy_process_group()
            torch.set_num_threads(threads)
        failed = [f"{c.name} exited with {c.exitcode}" for c in children if c.exitcode != 0]
        if failed:
            raise RuntimeError("data-parallel training: " + "; ".join(failed))
        return result
    finally:  # rank 0 stopped (cancelled, lease lost, an error): the others stop too
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(timeout=JOIN_TIMEOUT_SECONDS)


def _rank_main(rank: int, world_size: int, init_method: str, backend: str, device_type: str,
               model: torch.nn.Module, train_kwargs: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
    try:
        train(model, device=device, rank=Rank(rank, world_size), **train_kwargs)
        _barrier(device)  # see train_data_parallel: teardown in order
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's finalisation. A spawned child ends with sys.exit, whose
    # teardown of torch's C++ statics aborted a rank now and then after the ordered teardown above
    # ("terminate called without an active exception", exit -6: CI, 2026-12-04); a failed rank still
    # raises above and exits with its traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index or 0])
    else:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
