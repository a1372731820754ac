"""The child process that runs a user's ONNX graph for kdcore.onnx_sandbox.

An ONNX graph is a program (a `Loop` can run for 10^15 steps, a `ConstantOfShape` can ask for
terabytes), so it never runs in the API or in the worker's own process: this script runs it, with
its address space capped by RLIMIT_AS before onnxruntime is imported, and its parent kills it when
an answer takes too long or the job stops.

It runs as a script (`python -I kdcore/onnx_child.py CONFIG`), imports numpy and onnxruntime only
(no kdcore, no torch: it starts in about 0.2 s), and speaks frames on its stdin/stdout:
    kind (1 byte) | length (8 bytes, little endian) | payload
Parent -> child: b"R" + an .npy array (allow_pickle=False): run the graph on it; b"T" + an .npy
array: time the graph on it (3 warm-up runs, then the median of 20, in seconds, as JSON), so a
teacher's latency excludes the pipe.
Child -> parent: b"H" + JSON (the graph's inputs and outputs, once, after loading), b"O" + .npy
(the output of a run), b"E" + UTF-8 text (what failed; the child keeps serving after a failed run,
not after a failed load). Its stdout is kept for frames: file descriptor 1 points at stderr, so
anything onnxruntime prints cannot corrupt the protocol.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import sys

HEADER = struct.Struct("<cQ")


def read_frame(stream) -> tuple[bytes, bytes] | None:
    head = _read_exactly(stream, HEADER.size)
    if head is None:
        return None
    kind, length = HEADER.unpack(head)
    payload = _read_exactly(stream, length)
    if payload is None:
        return None
    return kind, payload


def _read_exactly(stream, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG), so a worker that is
    killed -9 leaves no graph running; then check the parent did not die before the call. Linux
    sends the signal when the parent *thread* that started this process ends: a GraphProcess is
    used from the thread that made it (the API's check runs start to end in one thread, a job's
    teacher lives in the worker's main thread)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    except (OSError, AttributeError):  # not Linux: the parent's finalizer still kills it
        pass
    if os.getppid() != parent:
        os._exit(1)


def time_runs(session, output: str, feed: dict, *, warmup: int = 3, repeats: int = 20) -> float:
    import statistics
    import time

    times = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        session.run([output], feed)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    config = json.loads(sys.argv[1])
    die_with_parent(int(config["parent"]))
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.get("memory_bytes"):
        limit = int(config["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def send(kind: bytes, payload: bytes) -> None:
        out.write(HEADER.pack(kind, len(payload)) + payload)

    def error(message: str) -> None:
        send(b"E", message.encode("utf-8", "replace"))

    import numpy as np
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = int(config.get("threads") or 1)
        options.inter_op_num_threads = 1
        with open(config["path"], "rb") as f:
            model = f.read()
        session = ort.InferenceSession(model, options, providers=config["providers"])
        del model
        describe = [{"name": a.name, "type": a.type, "shape": [d if isinstance(d, int) else str(d) for d in a.shape]}
                    for a in session.get_inputs()], \
                   [{"name": a.name, "type": a.type, "shape": [d if isinstance(d, int) else str(d) for d in a.shape]}
                    for a in session.get_outputs()]
    except MemoryError:
        error("out of memory while loading the graph")
        return 0
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        error(f"onnxruntime cannot load the graph: {exc}")
        return 0
    inputs, outputs = describe
    send(b"H", json.dumps({"inputs": inputs, "outputs": outputs}).encode())
    stdin = sys.stdin.buffer
    while True:
        frame = read_frame(stdin)
        if frame is None:  # the parent closed the pipe: done
            return 0
        kind, payload = frame
        if kind not in (b"R", b"T") or len(inputs) != 1 or len(outputs) != 1:
            error(f"unexpected request {kind!r}")
            continue
        x = np.load(io.BytesIO(payload), allow_pickle=False)
        try:
            if kind == b"T":
                send(b"O", json.dumps(time_runs(session, outputs[0]["name"], {inputs[0]["name"]: x})).encode())
                continue
            (result,) = session.run([outputs[0]["name"]], {inputs[0]["name"]: x})
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(result), allow_pickle=False)
        except MemoryError:
            error(f"out of memory on a batch of shape {list(x.shape)}")
            continue
        except Exception as exc:  # onnxruntime's own error types
            error(f"onnxruntime failed on a batch of shape {list(x.shape)}: {exc}")
            continue
        del result
        send(b"O", buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
