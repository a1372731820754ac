"""What the service tests build again and again, as plain functions (the fixtures built on them are in
the conftest.py files): the digits job body every test submits (`digits_job`), a student arch
(`mlp`), and the hand-made finished job the report and dashboard tests render (`hand_made`). The
digits teacher itself is the session fixture `digits_teacher` (tests/conftest.py, trained by
harness/teachers.py); kdcore's own builders are in tests/kdcore/factories.py."""

from __future__ import annotations

from typing import Any

# the arch fields of the `digits_teacher` fixture's teacher
TEACHER_ARCH = {"arch": "mlp", "arch_params": {"hidden_sizes": [128]}}


def mlp(*hidden_sizes: int) -> dict:
    """A student (or teacher) arch: an MLP with these hidden sizes."""
    return {"arch": "mlp", "arch_params": {"hidden_sizes": list(hidden_sizes)}}


def digits_job(teacher_id: str, *, arch: dict = TEACHER_ARCH, student: dict | None = None,
               dataset: dict | None = None, hyperparameters: dict | None = None, **fields: Any) -> dict:
    """A small job body for POST /v1/jobs: the teacher file `teacher_id` (with `arch`, the
    `digits_teacher` fixture's unless told), an mlp [16] student, the builtin digits, 2 epochs.
    `student` and `dataset` replace those sections, `hyperparameters` are merged over {"epochs": 2},
    and any other field (baseline, resources, metadata, ...) is added as given."""
    return {"teacher": {"file_id": teacher_id, **arch}, "student": student or mlp(16),
            "dataset": dataset or {"builtin": "digits"},
            "hyperparameters": {"epochs": 2, **(hyperparameters or {})}, **fields}


def hand_made(baseline: bool = True) -> tuple[dict, list[dict]]:
    """A finished job (as GET /v1/jobs/{id} returns it) with a hand-made result, and its metrics
    rows: what api/report.py renders, without training anything."""
    result = {
        "evaluated_on": "test", "num_eval_samples": 360,
        "teacher": {"accuracy": 0.9722, "parameters": 9610, "latency_ms": 0.5, "ece": 0.02, "macs": 9472},
        "student": {"arch": "mlp", "accuracy": 0.9444, "parameters": 1210, "latency_ms": 0.125,
                    "size_bytes": 6144, "agreement": 0.95},
        "baseline": {"accuracy": 0.9111, "agreement": 0.91} if baseline else None,
        "compression": 9610 / 1210, "speedup": 4.0, "temperature": 4.0, "alpha": 0.3, "loss": "forward_kl",
    }
    if baseline:
        result["distillation_gain"] = 0.9444 - 0.9111
    job = {"id": "job_0123456789abcdef01234567", "status": "succeeded", "result": result,
           "finished_at": "2026-11-28T21:00:00Z", "teacher_file_bytes": 40 * 1024,
           "spec": {"teacher": {"file_id": "file_x", "arch": "mlp"}, "student": {"arch": "mlp"},
                    "hyperparameters": {"temperature": 4.0, "alpha": 0.3, "epochs": 3},
                    "metadata": {"owner": "<script>alert('x')</script>", "link": "see a&b"}}}
    metrics = [{"run": run, "epoch": e,
                "values": {"train_loss": 1.0 / e, "train_hard": 0.6 / e, "train_soft": 0.4 / e,
                           "val_accuracy": 0.8 + e / 100 - (0.02 if run == "baseline" else 0),
                           "val_agreement": 0.8 + e / 50}}
               for run in (("baseline", "student") if baseline else ("student",)) for e in (1, 2, 3)]
    return job, metrics
