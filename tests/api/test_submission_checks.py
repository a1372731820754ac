"""Specs that cannot run are 422s at submission, not failed jobs (issue 16 item 9): initial student
weights that do not fit the student, a temperature outside its limits. Each answer is a problem+json
naming the field, and nothing is stored."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kdcore.models import build_model
from tests.factories import digits_job, mlp
from tests.utils import problem, upload


@pytest.fixture
def teacher_id(client, digits_teacher) -> str:
    return upload(client, digits_teacher[0], "teacher").json()["id"]


def job_body(teacher_id: str, **student) -> dict:
    return digits_job(teacher_id, student={**mlp(16), **student}, hyperparameters={"epochs": 1})


def init_weights(path, hidden_sizes: list[int], num_classes: int = 10):
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden_sizes": hidden_sizes}, input_shape=(64,), num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_initial_weights_that_do_not_fit_the_student_are_a_422_at_submission(client, teacher_id, tmp_path):
    """Checked from the file's safetensors header with the code the worker uses before it loads them
    (kdcore.spec_checks.state_dict_mismatches); before, the job was queued and failed in the worker."""
    fits = upload(client, init_weights(tmp_path / "fits.safetensors", [16]), "student_init").json()["id"]
    wider = upload(client, init_weights(tmp_path / "wider.safetensors", [32]), "student_init").json()["id"]
    classes = upload(client, init_weights(tmp_path / "classes.safetensors", [16], 3), "student_init").json()["id"]
    deeper = upload(client, init_weights(tmp_path / "deeper.safetensors", [16, 16]), "student_init").json()["id"]

    for file_id, reason in ((wider, "shape mismatches"), (classes, "shape mismatches"),
                            (deeper, "unexpected keys")):
        err = problem(client.post("/v1/jobs", json=job_body(teacher_id, init_file_id=file_id)), 422)
        assert err["errors"][0]["field"] == "student.init_file_id", err
        assert reason in err["detail"] and "do not fit the student" in err["detail"], err["detail"]
    assert client.get("/v1/jobs").json()["data"] == []

    created = client.post("/v1/jobs", json=job_body(teacher_id, init_file_id=fits))
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["student"]["init_file_id"] == fits


@pytest.mark.parametrize("temperature", [1e-300, 0.05, 100.5, [4, 1e-300]])
def test_a_temperature_outside_its_limits_is_a_422(client, teacher_id, temperature):
    """T = 1e-300 was accepted and the job diverged (NaN loss, "lower the learning rate")."""
    body = job_body(teacher_id)
    body["hyperparameters"]["temperature"] = temperature
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert err["errors"][0]["field"] == "hyperparameters.temperature"
    assert "between 0.1 (MIN_TEMPERATURE) and 100 (MAX_TEMPERATURE)" in err["detail"]
    assert client.get("/v1/jobs").json()["data"] == []


def test_the_student_and_teacher_checks_are_remembered_for_what_they_accepted(client, teacher_id, monkeypatch):
    """A submission builds the student (and a state-dict teacher) on the meta device once per distinct
    student, teacher file and data: the checks kdcore.spec_checks.remembered keeps. A refused student is
    checked again each time."""
    from kdcore import spec_checks
    monkeypatch.setattr(spec_checks, "_accepted", {})
    calls = []
    for name in ("check_student", "check_state_dict_teacher"):
        real = getattr(spec_checks, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(spec_checks, name, counted)
    from api import spec_resolution
    monkeypatch.setattr(spec_resolution, "check_state_dict_teacher", spec_checks.check_state_dict_teacher)
    for _ in range(2):
        assert client.post("/v1/jobs", json=digits_job(teacher_id)).status_code == 201
    assert sorted(calls) == ["check_state_dict_teacher", "check_student"]
    assert client.post("/v1/jobs", json=digits_job(teacher_id, student=mlp(24))).status_code == 201
    assert calls.count("check_student") == 2
    too_big = digits_job(teacher_id, student=mlp(*[100_000] * 20))
    for _ in range(2):
        problem(client.post("/v1/jobs", json=too_big), 422)
    assert calls.count("check_student") == 4
