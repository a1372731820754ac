"""What an uploaded file is, decided from its content by kdcore's inspection functions.
A file that is not what its purpose needs is a 422 with kdcore's reason; nothing is stored.

An uploaded ONNX graph is a program: it is loaded (and, when its class count is symbolic, run
once) only in a child process with memory and time limits (kdcore/onnx_sandbox.py), never in the
API process. Inspections are also bounded in number per API process (`max_concurrent_file_checks`):
each may read a file of up to `max_upload_bytes`, so their memory adds up across requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api.problems import Problem
from jobs.settings import Settings
from kdcore.data import inspect_dataset_file
from kdcore.errors import FormatError, KDError
from kdcore.formats import accepted_message, check_format
from kdcore.onnx_sandbox import GraphLimits
from kdcore.teachers import inspect_teacher_file

TEACHER_KINDS = {"teacher": ("state_dict", "onnx"), "teacher_logits": ("logits",), "student_init": ("state_dict",)}
BUSY_RETRY_AFTER_SECONDS = 5


def graph_limits(settings: Settings) -> GraphLimits:
    """The bounds of an upload's ONNX check: one thread, loading plus the probe run within the timeout."""
    return GraphLimits(memory_bytes=settings.onnx_check_memory_bytes, load_seconds=settings.onnx_check_timeout_seconds,
                       batch_seconds=settings.onnx_check_timeout_seconds, threads=1)


def inspect_upload(path: Path, purpose: str, limits: GraphLimits = GraphLimits()) -> tuple[str, dict[str, Any]]:
    """(format, info) for a file of this purpose; raises a KDError with field "file" otherwise."""
    try:
        fmt = check_format(path, purpose)
        if purpose == "dataset":
            return fmt, inspect_dataset_file(path).to_dict()
        info = inspect_teacher_file(path, purpose=purpose, limits=limits)
        if info.get("kind") not in TEACHER_KINDS[purpose]:
            raise FormatError(f"this {fmt} file holds {info.get('kind')}, not a {purpose}; "
                              f"{accepted_message(purpose)}")
        return fmt, info
    except KDError as e:
        raise type(e)(e.message, field="file") from None


async def inspect_upload_bounded(app: FastAPI, path: Path, purpose: str, settings: Settings) -> tuple[str, dict[str, Any]]:
    """`inspect_upload` in a worker thread, once one of the process's check slots is free. Waiting
    for a slot costs no thread and no database connection; past `file_check_wait_seconds` it is a
    503 with Retry-After (nothing is stored)."""
    gate = getattr(app.state, "file_checks", None)
    if gate is None:
        gate = app.state.file_checks = anyio.Semaphore(settings.max_concurrent_file_checks)
    acquired = False
    with anyio.move_on_after(settings.file_check_wait_seconds):
        await gate.acquire()
        acquired = True
    if acquired:
        try:
            return await run_in_threadpool(inspect_upload, path, purpose, graph_limits(settings))
        finally:
            gate.release()
    raise Problem(503, f"the server is checking {settings.max_concurrent_file_checks} other uploads and none "
                       f"finished within {settings.file_check_wait_seconds:g} s; send the file again",
                  headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})
