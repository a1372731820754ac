"""One spec (issue 14 item 1): the request models are kdcore's dataclasses, described by their fields'
help; file fields are renamed by the one table; `device: auto` is decided once, at submission."""

from __future__ import annotations

from dataclasses import fields

import pytest

from api.schemas.jobs import DatasetIn, HyperparametersIn, JobCreate, ResourcesIn, StudentIn, TeacherIn
from jobs.spec_files import FILE_FIELDS
from kdcore.spec import FIELD_HELP, DatasetSpec, Hyperparameters, ResourcesSpec, StudentSpec, TeacherSpec
from tests.utils import upload

SECTIONS = [("teacher", TeacherSpec, TeacherIn), ("student", StudentSpec, StudentIn),
            ("dataset", DatasetSpec, DatasetIn), ("hyperparameters", Hyperparameters, HyperparametersIn),
            ("resources", ResourcesSpec, ResourcesIn)]


@pytest.mark.parametrize("section, dataclass, model", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_every_kdcore_field_is_a_request_field_described_by_its_help(section, dataclass, model):
    renamed = {f.kd: f.api for f in FILE_FIELDS}
    for f in fields(dataclass):
        dotted = f"{section}.{f.name}"
        name = renamed.get(dotted, dotted).split(".", 1)[1]
        assert name in model.model_fields, dotted
        assert f.metadata["help"] == FIELD_HELP[dotted]
        assert f.metadata["help"] in model.model_fields[name].description, dotted
    assert len(model.model_fields) == len(fields(dataclass))


def test_file_fields_take_ids_under_the_services_names_only():
    schema = JobCreate.model_json_schema()["$defs"]
    assert "unlabeled_file_ids" in schema["DatasetIn"]["properties"]
    assert "unlabeled_paths" not in schema["DatasetIn"]["properties"]
    assert schema["DatasetIn"]["properties"]["unlabeled_file_ids"]["description"].startswith(
        "ids of files uploaded with purpose dataset.")
    assert schema["TeacherIn"]["required"] == ["file_id"] and "path" not in schema["TeacherIn"]["properties"]


@pytest.mark.parametrize("body_part, device", [
    ({}, "cpu"),
    ({"resources": {"device": "cuda"}}, "cuda"),
    ({"hyperparameters": {"epochs": 1, "device": "cuda"}}, "cuda"),  # asks for a GPU: routed to kd.cuda.1
    ({"hyperparameters": {"epochs": 1, "device": "cpu"}}, "cpu"),
], ids=["default", "cuda-queue", "cuda-said-in-hyperparameters", "cpu"])
def test_device_auto_is_decided_at_submission_and_stored(client, digits_teacher, body_part, device):
    teacher_id = upload(client, digits_teacher[0], "teacher").json()["id"]
    body = {"teacher": {"file_id": teacher_id, **digits_teacher[1]}, "hyperparameters": {"epochs": 1}, **body_part}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["spec"]["hyperparameters"]["device"] == job["spec"]["resources"]["device"] == device
    assert client.get(f"/v1/jobs/{job['id']}").json()["spec"]["hyperparameters"]["device"] == device
