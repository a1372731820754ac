"""/v1/jobs without a worker: submission checks (every 422), defaults echoed, the broker message,
listing, cancellation of a queued job, and tenant isolation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from harness.services import REDIS_SERVER
from tests.factories import digits_job
from tests.utils import REDIS_TEST_DB, problem, upload


def test_create_resolves_and_echoes_every_default(client, teacher_id):
    resp = client.post("/v1/jobs", json=digits_job(teacher_id))
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["status"] == "queued" and job["attempt"] == 0 and job["max_attempts"] == 3
    hp = job["spec"]["hyperparameters"]
    assert (hp["temperature"], hp["alpha"], hp["loss"], hp["epochs"]) == (4.0, 0.3, "forward_kl", 2)
    assert hp["batch_size"] == 128 and hp["optimizer"] == "adamw" and hp["schedule"] == "cosine"
    assert job["spec"]["student"]["arch_params"] == {"hidden_sizes": [16], "dropout": 0.0}
    assert job["spec"]["teacher"]["file_id"] == teacher_id and "path" not in job["spec"]["teacher"]
    assert job["spec"]["baseline"] is True
    assert job["progress"]["fraction"] == 0.0


def test_create_publishes_the_job_id_to_the_broker(client, teacher_id):
    job = client.post("/v1/jobs", json=digits_job(teacher_id)).json()
    r = redis.Redis.from_url(f"{REDIS_SERVER}/{REDIS_TEST_DB}")
    messages = [json.loads(m) for m in r.lrange("kd.cpu", 0, -1)]
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "kd.run_job"
    assert json.loads(__import__("base64").b64decode(messages[0]["body"]))[0] == [job["id"]]


@pytest.mark.parametrize("overrides, field", [
    ({"student.arch": "transformer"}, "student.arch"),
    ({"student.arch_params": {"hidden_sizes": [0]}}, "student.arch_params.hidden_sizes"),
    ({"student.arch_params": {"depth": 3}}, "student.arch_params.depth"),
    ({"hyperparameters": {"temperature": 0}}, "hyperparameters.temperature"),
    ({"hyperparameters": {"temperature": -1}}, "hyperparameters.temperature"),
    ({"hyperparameters": {"alpha": 1.5}}, "hyperparameters.alpha"),
    ({"hyperparameters": {"alpha": -0.1}}, "hyperparameters.alpha"),
    ({"hyperparameters": {"epochs": 0}}, "hyperparameters.epochs"),
    ({"hyperparameters": {"loss": "cosine"}}, "hyperparameters.loss"),
    ({"hyperparameters": {"temperature": "hot"}}, "hyperparameters.temperature"),
    ({"dataset": {"builtin": "imagenet"}}, "dataset.builtin"),
    ({"dataset": {}}, "dataset"),
    ({"teacher.arch_params": {"hidden_sizes": [64]}}, "teacher.arch_params"),
    ({"teacher": {"arch": "cnn2d", "arch_params": {}}}, "teacher.arch"),
    ({"student": {"arch": "cnn2d", "arch_params": {}}}, "student.arch"),
    ({"status": "succeeded"}, "status"),
    ({"tenant_id": "someone"}, "tenant_id"),
    ({"attempt": 5}, "attempt"),
])
def test_a_spec_that_cannot_run_is_422_naming_the_field(client, teacher_id, overrides, field):
    body = digits_job(teacher_id)
    for dotted, value in overrides.items():
        head, _, tail = dotted.partition(".")
        if tail:
            body[head][tail] = value
        elif isinstance(value, dict) and head in body and head != "dataset":
            body[head].update(value)
        else:
            body[head] = value
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert err["errors"][0]["field"] == field, err
    assert client.get("/v1/jobs").json()["data"] == []


def test_teacher_with_other_class_count_is_422(client, tmp_path):
    from safetensors.torch import save_file

    from kdcore.models import build_model

    model = build_model("mlp", {"hidden_sizes": [8]}, input_shape=(64,), num_classes=7)
    path = tmp_path / "t7.safetensors"
    save_file(model.state_dict(), str(path))
    tid = upload(client, path, "teacher").json()["id"]
    body = digits_job(tid)
    body["teacher"]["arch_params"] = {"hidden_sizes": [8]}
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert err["errors"][0]["field"] == "teacher.file_id" and "7" in err["detail"] and "10" in err["detail"]


def test_dataset_shape_mismatch_and_wrong_purpose_are_422(client, teacher_id, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(50, 32).astype(np.float32), y=np.arange(50) % 10)
    data_id = upload(client, path, "dataset").json()["id"]
    err = problem(client.post("/v1/jobs", json=digits_job(teacher_id, dataset={"train_file_id": data_id})), 422)
    assert err["errors"][0]["field"] == "teacher.arch_params"
    err = problem(client.post("/v1/jobs", json=digits_job(data_id)), 422)
    assert err["errors"][0]["field"] == "teacher.file_id" and "dataset" in err["detail"]
    err = problem(client.post("/v1/jobs", json=digits_job(teacher_id, dataset={"train_file_id": teacher_id})), 422)
    assert err["errors"][0]["field"] == "dataset.train_file_id"


def test_another_tenants_file_reads_as_missing(client, teacher_id, other_tenant_headers):
    mine = problem(client.post("/v1/jobs", json=digits_job(teacher_id), headers=other_tenant_headers), 422)
    unknown = problem(client.post("/v1/jobs", json=digits_job("file_nope"), headers=other_tenant_headers), 422)
    assert mine["errors"][0]["field"] == unknown["errors"][0]["field"] == "teacher.file_id"
    assert mine["detail"].replace(teacher_id, "X") == unknown["detail"].replace("file_nope", "X")


def test_list_filters_and_paginates(client, teacher_id):
    ids = [client.post("/v1/jobs", json=digits_job(teacher_id)).json()["id"] for _ in range(3)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get("/v1/jobs", params={"limit": 2, "after": page["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    problem(client.get("/v1/jobs", params={"status": "paused"}), 422)
    problem(client.get("/v1/jobs", params={"limit": 0}), 422)


def test_cancel_queued_is_immediate_and_finished_is_409(client, teacher_id):
    job = client.post("/v1/jobs", json=digits_job(teacher_id)).json()
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert resp.json()["finished_at"] is not None
    problem(client.post(f"/v1/jobs/{job['id']}/cancel"), 409)
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "cancelled"
    problem(client.get(f"/v1/jobs/{job['id']}/student"), 409)


@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/metrics"), ("GET", "/student")])
def test_other_tenants_job_is_the_same_404_as_unknown(client, teacher_id, other_tenant_headers, method, suffix):
    job = client.post("/v1/jobs", json=digits_job(teacher_id)).json()
    theirs = client.request(method, f"/v1/jobs/{job['id']}{suffix}", headers=other_tenant_headers)
    unknown = client.request(method, f"/v1/jobs/job_unknown{suffix}", headers=other_tenant_headers)
    problem(theirs, 404)
    problem(unknown, 404)
    assert theirs.json()["detail"].replace(job["id"], "X") == unknown.json()["detail"].replace("job_unknown", "X")
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_every_invalid_field_is_in_one_422(client, digits_teacher):
    """A spec with several bad values is answered once with all of them, not one per round trip."""
    fid = upload(client, digits_teacher[0], "teacher").json()["id"]
    resp = client.post("/v1/jobs", json={"teacher": {"file_id": fid, **digits_teacher[1]},
                                         "hyperparameters": {"alpha": 2.0, "epochs": 0, "batch_size": 0,
                                                             "temperature": 0.01}})
    err = problem(resp, 422)
    assert {e["field"] for e in err["errors"]} == {"hyperparameters.alpha", "hyperparameters.epochs",
                                                   "hyperparameters.batch_size", "hyperparameters.temperature"}
    assert all(e["reason"] for e in err["errors"])
    assert client.get("/v1/jobs").json()["data"] == []
