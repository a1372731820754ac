"""A user's ONNX graph, run in a child process with limits (kdcore/onnx_child.py is the child).

Limits (`GraphLimits`, all optional; the service sets every one, see the README's limits table):
- memory_bytes: the child's address space (RLIMIT_AS). A graph that asks for more fails its
  allocation: a clear error, not a process that eats the machine. Not applied with the CUDA
  provider, whose driver reserves far more address space than it uses (the batch timeout and the
  job's wall-clock limit still hold there).
- load_seconds: loading the graph (onnxruntime folds constants then: a `ConstantOfShape` bomb
  runs here) and any probe run at inspection.
- batch_seconds: one batch.
- threads: onnxruntime's intra-op threads in the child.
Past a time limit, or when `should_stop()` turns true (polled every POLL_SECONDS while the child
works: cancellation of a job reaches a running graph), the child is killed. A killed or dead child
is a TeacherError naming what happened, or `Stopped` when the caller asked to stop.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdcore.errors import Stopped, TeacherError
from kdcore.onnx_child import HEADER

CHILD = Path(__file__).with_name("onnx_child.py")
POLL_SECONDS = 0.1
STDERR_SHOWN = 300  # characters of the child's last words in an error message
FIELD = "teacher"


@dataclass(frozen=True)
class GraphLimits:
    memory_bytes: int | None = None
    load_seconds: float | None = None
    batch_seconds: float | None = None
    threads: int | None = None


class GraphProcess:
    """One ONNX graph loaded in one child process; `run` answers one batch at a time."""

    def __init__(self, path: str | os.PathLike, *, providers: list, limits: GraphLimits = GraphLimits(),
                 should_stop: Callable[[], bool] | None = None):
        self.limits, self.should_stop = limits, should_stop
        cuda = any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers)
        config = {"path": os.fspath(path), "providers": providers,
                  "memory_bytes": None if cuda else limits.memory_bytes,
                  "threads": limits.threads or 1, "parent": os.getpid()}
        self._stderr = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_", "AWS_"))}
        env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MiB of address space per arena otherwise
        env["OMP_NUM_THREADS"] = str(config["threads"])
        self._proc = subprocess.Popen([sys.executable, "-I", str(CHILD), json.dumps(config)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=env, close_fds=True)
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        kind, payload = self._receive(limits.load_seconds, "loading the graph")
        if kind == b"E":
            self.close()
            raise TeacherError(self._explain(payload.decode("utf-8", "replace")), field=FIELD)
        description = json.loads(payload)
        self.inputs: list[dict[str, Any]] = description["inputs"]
        self.outputs: list[dict[str, Any]] = description["outputs"]

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.load(io.BytesIO(self._ask(b"R", x, f"a batch of shape {list(x.shape)}")), allow_pickle=False)

    def time(self, x: np.ndarray) -> float:
        """Median seconds of one run on `x`, timed inside the child (the pipe is not counted)."""
        return float(json.loads(self._ask(b"T", x, f"timing a batch of shape {list(x.shape)}")))

    def _ask(self, kind: bytes, x: np.ndarray, what: str) -> bytes:
        """Send `x` as a `kind` request; the answer's payload, or the child's error as a TeacherError."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(x), allow_pickle=False)
        self._send(kind, buffer.getvalue())
        answer, payload = self._receive(self.limits.batch_seconds, what)
        if answer == b"E":
            raise TeacherError(self._explain(payload.decode("utf-8", "replace")), field=FIELD)
        return payload

    def _explain(self, message: str) -> str:
        """The child's error, with the memory limit named when an allocation is what failed."""
        memory = self.limits.memory_bytes
        if memory and any(s in message for s in ("Failed to allocate", "out of memory", "bad_alloc")):
            message = (f"{message.strip()} (the graph's process is limited to {memory / 2**30:.1f} GiB of memory, "
                       "a limit of the service)")
        return message

    def close(self) -> None:
        self._finalizer()
        self._stderr.close()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    # --- the pipe, with the limits ---
    def _send(self, kind: bytes, payload: bytes) -> None:
        if not self.alive:
            raise TeacherError("the ONNX teacher's process is no longer running", field=FIELD)
        data = memoryview(HEADER.pack(kind, len(payload)) + payload)
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        deadline = _deadline(self.limits.batch_seconds)
        while data:
            self._check(deadline, "sending a batch")
            _, writable, _ = select.select([], [fd], [], POLL_SECONDS)
            if writable:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise self._died("sending a batch") from None

    def _receive(self, seconds: float | None, what: str) -> tuple[bytes, bytes]:
        deadline = _deadline(seconds)
        fd = self._proc.stdout.fileno()
        os.set_blocking(fd, False)
        buffer = bytearray()
        need = HEADER.size
        while True:
            if len(buffer) >= HEADER.size:
                kind, length = HEADER.unpack(bytes(buffer[:HEADER.size]))
                need = HEADER.size + length
                if len(buffer) >= need:
                    return kind, bytes(buffer[HEADER.size:need])
            self._check(deadline, what, seconds)
            readable, _, _ = select.select([fd], [], [], POLL_SECONDS)
            if not readable:
                continue
            try:
                chunk = os.read(fd, max(need - len(buffer), 1 << 16))
            except BlockingIOError:
                continue
            if not chunk:
                raise self._died(what)
            buffer += chunk

    def _check(self, deadline: float | None, what: str, seconds: float | None = None) -> None:
        if self.should_stop is not None and self.should_stop():
            self.close()
            raise Stopped(f"stopped while the ONNX teacher was {what}")
        if deadline is not None and time.monotonic() > deadline:
            self.close()
            seconds = seconds if seconds is not None else self.limits.batch_seconds
            raise TeacherError(f"the ONNX teacher took longer than {seconds:g} s {_while(what)} and was "
                               "stopped (a limit of the service)", field=FIELD)

    def _died(self, what: str) -> TeacherError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0, io.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - STDERR_SHOWN))
        tail = self._stderr.read().decode("utf-8", "replace").strip()
        self.close()
        how = (f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}" if code is not None else "stopped answering")
        memory = self.limits.memory_bytes
        hint = (f"; a graph that needs more than its memory limit of {memory / 2**30:.1f} GiB ends this way"
                if memory else "")
        return TeacherError(f"the ONNX teacher's process {how} {_while(what)}{hint}"
                            f"{': ' + tail.splitlines()[-1] if tail else ''}", field=FIELD)


def _while(what: str) -> str:
    return f"while {what}" if what.startswith(("loading", "sending")) else f"on {what}"


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
