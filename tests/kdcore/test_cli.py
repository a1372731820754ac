"""`python -m kdcore run SPEC.json --out DIR` and the package's public surface."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path


from kdcore.__main__ import ProgressPrinter, main
from kdcore.spec import FIELD_HELP
from tests.kdcore.factories import save_state_dict, train_digits_teacher

ROOT = Path(__file__).resolve().parents[2]
SERVICE_MODULES = ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "redis",
                   "jobs", "api", "worker")


def _kdcore(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_run_help_lists_every_spec_field():
    proc = _kdcore("-m", "kdcore", "run", "--help")
    assert proc.returncode == 0, proc.stderr
    for name in FIELD_HELP:
        assert f"  {name} " in proc.stdout, name
    for option in ("--out", "--checkpoint-dir", "--no-onnx"):
        assert option in proc.stdout


def test_a_run_writes_the_artifacts_and_prints_the_accuracies(tmp_path):
    teacher = save_state_dict(train_digits_teacher(), tmp_path / "teacher.safetensors")
    spec = {
        "teacher": {"path": str(teacher), "arch": "mlp", "arch_params": {"hidden_sizes": [64]}},
        "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
        "dataset": {"builtin": "digits"},
        "hyperparameters": {"epochs": 1, "learning_rate": 0.01, "device": "cpu", "repeats": 2},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = _kdcore("-m", "kdcore", "run", str(tmp_path / "spec.json"), "--out", str(out), "--no-onnx")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"student.safetensors", "metrics.jsonl", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("teacher  accuracy ") and f"{100 * summary['teacher']['accuracy']:.1f}%" in lines[0]
    assert lines[1].startswith("student  accuracy ") and f"{100 * summary['student']['accuracy']:.1f}%" in lines[1]
    assert lines[2].startswith("baseline accuracy ") and "points" in lines[2]
    assert f"; {summary['comparison']['verdict']}, p = " in lines[2]  # the paired test of the same rows
    student = summary["repeats"]["student"]
    assert lines[3].startswith("over seeds 0, 1 (accuracy): student ")
    assert f"student {100 * student['mean']:.1f} ± {100 * student['std']:.1f}%, baseline " in lines[3]
    # 1 epoch each, student and baseline: the second seed's runs write no metric rows
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # Piped, not a terminal: plain lines (epochs, events) but no progress-bar redraws.
    assert "\033[" not in proc.stdout + proc.stderr and "\r" not in proc.stdout + proc.stderr
    assert "[student] epoch 1/1" in proc.stderr and "[baseline] epoch 1/1" in proc.stderr


def test_a_bad_spec_exits_2_naming_the_field_without_a_traceback(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"teacher": {"path": "t.onnx"},
                                                    "hyperparameters": {"alpha": 2}}))
    proc = _kdcore("-m", "kdcore", "run", str(tmp_path / "spec.json"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: hyperparameters.alpha: ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out" / "student.safetensors").exists()


def test_a_missing_spec_file_or_invalid_json_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    (tmp_path / "broken.json").write_text("{")
    assert main(["run", str(tmp_path / "broken.json"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_progress_redraws_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    piped, tty = io.StringIO(), Tty()
    for stream in (piped, tty):
        printer = ProgressPrinter(stream)
        printer.line("[student] |###...| step 3/10")
        printer.done("[student] epoch 1/1")
    assert piped.getvalue() == "[student] epoch 1/1\n"
    assert "\r\033[K[student] |###...| step 3/10" in tty.getvalue()


def test_public_api_imports_and_no_service_modules_are_pulled_in():
    code = (
        "import json, sys\n"
        "from kdcore import kd_loss, run_distillation, load_student, DistillSpec\n"
        "import kdcore, kdcore.__main__, kdcore.pipeline, kdcore.trainer, kdcore.spec_checks\n"
        "assert callable(kd_loss) and callable(run_distillation) and callable(load_student)\n"
        "assert DistillSpec.__module__ == 'kdcore.spec'\n"
        f"service = {SERVICE_MODULES!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in service)))\n"
    )
    proc = _kdcore("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_a_run_on_inputs_without_labels_prints_agreement_and_no_accuracy(tmp_path):
    import numpy as np

    from kdcore.data import load_builtin

    teacher = save_state_dict(train_digits_teacher(), tmp_path / "teacher.safetensors")
    np.savez(tmp_path / "inputs.npz", x=load_builtin("digits")["train"].x.numpy())  # x only
    spec = {"teacher": {"path": str(teacher), "arch": "mlp", "arch_params": {"hidden_sizes": [64]}},
            "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
            "dataset": {"train_path": str(tmp_path / "inputs.npz")},
            "hyperparameters": {"epochs": 1, "learning_rate": 0.01, "device": "cpu"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = _kdcore("-m", "kdcore", "run", str(tmp_path / "spec.json"), "--out", str(tmp_path / "out"), "--no-onnx")
    assert proc.returncode == 0, proc.stderr
    assert "student  accuracy n/a" in proc.stdout and "agreement" in proc.stdout
    assert "val acc n/a agreement" in proc.stderr
