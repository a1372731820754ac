"""A user's ONNX graph runs only in a child process with limits (issue 16 item 2): a graph that
never ends is stopped at its time limit, one that asks for 4 GiB fails inside its memory limit,
a caller that wants to stop kills the child at once, and a dead child is a clear error. None of
it may cost the calling process time or memory."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import numpy as np
import pytest
import torch

from kdcore.errors import Stopped, TeacherError
from kdcore.onnx_sandbox import GraphLimits
from kdcore.teachers import OnnxTeacher, inspect_teacher_file, load_teacher
from tests import hostile_graphs as g

LIMITS = GraphLimits(memory_bytes=1 << 30, load_seconds=2, batch_seconds=2, threads=1)


def children() -> set[int]:
    pids = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_graph_that_never_ends_is_stopped_at_the_time_limit_of_an_inspection(tmp_path):
    path = g.save(g.endless_loop(classes_symbolic=True), tmp_path / "loop.onnx")
    before = children()
    started = time.monotonic()
    with pytest.raises(TeacherError, match="took longer than 2 s"):
        inspect_teacher_file(path, limits=LIMITS)
    assert time.monotonic() - started < 10
    assert not [p for p in children() - before if live(p)]  # the child was killed and reaped


def test_a_graph_that_asks_for_4_gib_fails_inside_its_memory_limit(tmp_path):
    path = g.save(g.memory_bomb(), tmp_path / "bomb.onnx")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TeacherError, match=r"limited to 1\.0 GiB of memory"):
        inspect_teacher_file(path, limits=LIMITS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 256 * 1024  # KiB


def test_the_same_graph_without_a_memory_limit_does_allocate(tmp_path):
    """The control: the bomb is real (0.5 GiB here), so the limit is what stopped it above."""
    path = g.save(g.memory_bomb(floats=1 << 27), tmp_path / "bomb.onnx")
    info = inspect_teacher_file(path, limits=GraphLimits(load_seconds=30, batch_seconds=30))
    assert info["num_classes"] == g.CLASSES
    with pytest.raises(TeacherError, match="(?i)memory|allocate"):
        inspect_teacher_file(path, limits=GraphLimits(memory_bytes=256 << 20, load_seconds=30, batch_seconds=30))


def test_a_graph_that_hangs_on_data_is_stopped_at_the_batch_limit(tmp_path):
    path = g.save(g.input_dependent_loop(), tmp_path / "loop.onnx")
    teacher = load_teacher(path, input_shape=(4,), num_classes=3, limits=LIMITS)  # loads at once: nothing folds
    started = time.monotonic()
    with pytest.raises(TeacherError, match=r"took longer than 2 s on a batch of shape \[5, 4\]"):
        teacher.logits(torch.zeros(5, 4))
    assert time.monotonic() - started < 10
    assert not teacher.graph.alive
    with pytest.raises(TeacherError, match="no longer running"):
        teacher.logits(torch.zeros(5, 4))


def test_a_caller_that_stops_kills_the_running_graph_at_once(tmp_path):
    path = g.save(g.input_dependent_loop(), tmp_path / "loop.onnx")
    stop = threading.Event()
    teacher = OnnxTeacher(path, limits=GraphLimits(batch_seconds=600), should_stop=stop.is_set)
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        teacher.logits(torch.zeros(5, 4))
    assert time.monotonic() - started < 3
    assert not teacher.graph.alive


def test_a_child_that_dies_is_a_clear_error(tmp_path):
    path = g.save(g.input_dependent_loop(), tmp_path / "loop.onnx")
    teacher = OnnxTeacher(path, limits=GraphLimits(batch_seconds=600))
    threading.Timer(0.5, lambda: os.kill(teacher.graph._proc.pid, signal.SIGKILL)).start()
    with pytest.raises(TeacherError, match="killed by signal SIGKILL"):
        teacher.logits(torch.zeros(5, 4))


def test_a_well_behaved_graph_gives_the_same_logits_as_in_process(tmp_path):
    import onnxruntime as ort

    path = g.save(g.linear(), tmp_path / "linear.onnx")
    x = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)  # three chunks of 1024
    teacher = OnnxTeacher(path, limits=LIMITS)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(teacher.logits(torch.from_numpy(x)).numpy(), expected)
    pid = teacher.graph._proc.pid
    teacher.close()
    assert not live(pid)


def test_a_graph_running_for_a_process_that_is_killed_dies_with_it(tmp_path):
    """A worker killed -9 while its teacher hangs leaves no graph pinning a core."""
    import subprocess
    import sys

    path = g.save(g.input_dependent_loop(), tmp_path / "loop.onnx")
    script = ("import sys, torch; from kdcore.teachers import OnnxTeacher; "
              f"t = OnnxTeacher({str(path)!r}); print(t.graph._proc.pid, flush=True); t.logits(torch.zeros(5, 4))")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    assert live(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while live(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live(child)


def test_a_graph_is_timed_in_its_child_without_the_pipe(tmp_path):
    """The teacher's latency in a job's summary compares with the student's: no pipe, no copies."""
    path = g.save(g.linear(), tmp_path / "linear.onnx")
    teacher = OnnxTeacher(path, limits=LIMITS)
    batch = np.zeros((64, 4), np.float32)
    inside = teacher.measure_latency(batch)
    started = time.perf_counter()
    for _ in range(20):
        teacher.logits(torch.from_numpy(batch))
    through_pipe = (time.perf_counter() - started) / 20
    assert 0 < inside < through_pipe
