"""`kd` end to end as a user runs it: a subprocess against real `python -m api` and `python -m worker`
processes on the embedded stack (SQLite + the SQLAlchemy broker transport)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jobs.migrate import upgrade
from harness.services import ROOT

pytestmark = pytest.mark.slow
KEY = "kd_cli_" + "c" * 40


@pytest.fixture
def service(tmp_path, live_stack):
    """The embedded service on a free port: its URL and its worker."""
    data = tmp_path / "data"
    data.mkdir()
    db, broker = f"sqlite:///{data}/kd.sqlite3", f"sqla+sqlite:///{data}/broker.sqlite3"
    upgrade(db)
    running = live_stack(api_key=KEY, database_url=db, broker_url=broker)
    return running.base_url, running.workers[0]


def kd(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env.update(KD_URL=url, KD_API_KEY=KEY, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "kdclient", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_kd_distill_end_to_end(service, digits_teacher, tmp_path):
    url, worker = service
    teacher, arch = digits_teacher
    student = tmp_path / "out" / "student.safetensors"
    run = kd(url, "distill", "--teacher", str(teacher), "--teacher-arch", "mlp",
             "--teacher-params", json.dumps(arch["arch_params"]), "--builtin", "digits", "--standardize",
             "--student", "mlp:hidden_sizes=16", "-T", "4", "--alpha", "0.3", "--epochs", "2", "--lr", "0.01",
             "--poll", "0.3", "-o", str(student))
    assert run.returncode == 0, (run.stdout, run.stderr, worker.output()[-3000:])
    assert "Traceback" not in run.stdout + run.stderr
    for needle in ("teacher", "student (distilled)", "baseline (no teacher)", "%", "compression",
                   "sha256 verified"):
        assert needle in run.stdout, run.stdout
    assert "student epoch 2/2: loss" in run.stderr  # the events, followed live
    assert student.is_file() and not list(student.parent.glob("*.part*"))

    from kdcore import load_student
    assert load_student(student) is not None

    job_id = run.stdout.rsplit("from job ", 1)[1].split()[0]
    got = kd(url, "jobs", "get", job_id)
    assert got.returncode == 0 and "succeeded" in got.stdout and "student (distilled)" in got.stdout
    onnx = kd(url, "jobs", "download", job_id, "-o", str(tmp_path / "student.onnx"))
    assert onnx.returncode == 0 and (tmp_path / "student.onnx").stat().st_size > 0, onnx.stderr
    assert kd(url, "jobs", "watch", job_id).returncode == 0

    missing = kd(url, "jobs", "get", "job_nope")
    assert missing.returncode == 2
    assert "404 Not Found: no job 'job_nope'" in missing.stderr and "Traceback" not in missing.stderr
