"""Unlabelled inputs through the HTTP API (issue 12): uploads without labels, dataset.unlabeled_file_ids,
labels_per_class, every 422 at submission, tenant isolation, and a job whose training data has no
label at all run by a real worker process."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kdcore.data import MAX_SAMPLES, load_builtin
from kdcore.spec import MAX_UNLABELED_FILES
from tests.factories import digits_job
from tests.utils import problem, upload, wait_for



@pytest.fixture
def teacher_id(client, digits_teacher) -> str:
    return upload(client, digits_teacher[0], "teacher").json()["id"]


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory):
    """Digits as uploads: 200 labelled rows, the other training rows as x only, the test split
    labelled, and a file of another feature shape."""
    d = tmp_path_factory.mktemp("npz")
    digits = load_builtin("digits")
    train, test = digits["train"], digits["test"]
    np.savez(d / "labelled.npz", x=train.x[:200].numpy(), y=train.y[:200].numpy())
    np.savez(d / "inputs.npz", x=train.x[200:].numpy())
    np.savez(d / "all_inputs.npz", x=train.x.numpy())
    np.savez(d / "test.npz", x=test.x.numpy(), y=test.y.numpy())
    np.savez(d / "wide.npz", x=np.zeros((10, 65), np.float32))
    mixed_y = train.y[:50].numpy().copy()
    mixed_y[::2] = -1
    np.savez(d / "mixed.npz", x=train.x[:50].numpy(), y=mixed_y)
    np.savez(d / "logits.npz", logits=np.zeros((200, 10), np.float32))
    eleven = train.y[:30].numpy().copy()
    eleven[0] = 11  # labels up to 11: twelve classes, digits has ten
    np.savez(d / "twelve_classes.npz", x=train.x[:30].numpy(), y=eleven)
    np.savez(d / "images.npz", x=np.zeros((20, 1, 8, 8), np.float32), y=np.arange(20) % 10)
    # MAX_SAMPLES (10,000,000) rows: one byte each, so the files stay under the tests' upload limit
    np.savez(d / "one_column.npz", x=np.zeros((10, 1), np.uint8), y=np.arange(10) % 10)
    np.savez(d / "one_column_inputs.npz", x=np.zeros((MAX_SAMPLES // MAX_UNLABELED_FILES, 1), np.uint8))
    return d


def _ids(client, npz_files, *names, purpose="dataset") -> list[str]:
    out = []
    for name in names:
        resp = upload(client, npz_files / name, purpose)
        assert resp.status_code == 201, resp.text
        out.append(resp.json()["id"])
    return out


def _job(teacher_id: str, dataset: dict, **top) -> dict:
    return digits_job(teacher_id, dataset=dataset, hyperparameters={"epochs": 1, **top.pop("hp", {})}, **top)


def test_uploads_without_labels_say_how_many_rows_are_labelled(client, npz_files):
    inputs = upload(client, npz_files / "inputs.npz", "dataset").json()
    assert inputs["num_labeled"] == 0 and inputs["num_samples"] == 1438 - 200 and inputs["input_shape"] == [64]
    mixed = upload(client, npz_files / "mixed.npz", "dataset").json()
    assert mixed["num_labeled"] == 25 and mixed["num_samples"] == 50
    labelled = upload(client, npz_files / "labelled.npz", "dataset").json()
    assert labelled["num_labeled"] == 200
    assert client.get(f"/v1/files/{inputs['id']}").json()["num_labeled"] == 0


def test_unlabeled_files_join_the_job_and_are_echoed_as_ids(client, teacher_id, npz_files):
    train, inputs, test = _ids(client, npz_files, "labelled.npz", "inputs.npz", "test.npz")
    resp = client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": train, "unlabeled_file_ids": [inputs],
                                                          "test_file_id": test}, hp={"augment": ["mixup"]}))
    assert resp.status_code == 201, resp.text
    dataset = resp.json()["spec"]["dataset"]
    assert dataset["unlabeled_file_ids"] == [inputs] and "unlabeled_paths" not in dataset
    assert resp.json()["spec"]["hyperparameters"]["augment"] == ["mixup"]


@pytest.mark.parametrize("case, field", [
    ("wide", "dataset.unlabeled_file_ids[0]"),
    ("unknown", "dataset.unlabeled_file_ids[1]"),
    ("teacher_purpose", "dataset.unlabeled_file_ids[0]"),
    ("too_many", "dataset.unlabeled_paths"),
])
def test_bad_unlabeled_files_are_422s_naming_the_item(client, teacher_id, npz_files, case, field):
    inputs, wide = _ids(client, npz_files, "inputs.npz", "wide.npz")
    ids = {"wide": [wide], "unknown": [inputs, "file_0123456789abcdef01234567"],
           "teacher_purpose": [teacher_id], "too_many": [inputs] * 17}[case]
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"builtin": "digits", "unlabeled_file_ids": ids})),
                  422)
    expected = "dataset.unlabeled_file_ids" if case == "too_many" else field
    assert err["errors"][0]["field"] == expected, err


def test_another_tenants_unlabeled_file_reads_like_an_unknown_one(client, teacher_id, npz_files,
                                                                   other_tenant_headers):
    theirs = upload(client, npz_files / "inputs.npz", "dataset", headers=other_tenant_headers).json()["id"]
    unknown = "file_" + "0" * 24
    answers = []
    for file_id in (theirs, unknown):
        resp = client.post("/v1/jobs", json=_job(teacher_id, {"builtin": "digits", "unlabeled_file_ids": [file_id]}))
        body = problem(resp, 422)
        answers.append(resp.text.replace(file_id, "<id>"))
        assert body["errors"][0]["field"] == "dataset.unlabeled_file_ids[0]"
    assert answers[0] == answers[1]


def test_no_labelled_row_means_alpha_zero_and_no_baseline(client, teacher_id, npz_files):
    (inputs,) = _ids(client, npz_files, "all_inputs.npz")
    resp = client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs}))
    assert resp.status_code == 201, resp.text
    spec = resp.json()["spec"]
    assert spec["hyperparameters"]["alpha"] == 0.0 and spec["baseline"] is False
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs}, hp={"alpha": 0.5})), 422)
    assert err["errors"][0]["field"] == "hyperparameters.alpha" and "no labelled row" in err["detail"]
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs}, baseline=True)), 422)
    assert err["errors"][0]["field"] == "baseline" and "nothing to train" in err["detail"]


@pytest.mark.parametrize("dataset, hp, field", [
    ({"builtin": "digits", "labels_per_class": 0}, {}, "dataset.labels_per_class"),
    ({"builtin": "digits"}, {"augment": ["crop_flip"]}, "hyperparameters.augment"),
    ({"builtin": "digits"}, {"augment": ["rotate"]}, "hyperparameters.augment"),
    ({"builtin": "digits"}, {"augment": "shift", "shift_max": 0}, "hyperparameters.shift_max"),
], ids=["labels-per-class", "crop-flip-on-vectors", "unknown-augmentation", "shift-max"])
def test_other_new_fields_are_checked_at_submission(client, teacher_id, dataset, hp, field):
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, dataset, hp=hp)), 422)
    assert err["errors"][0]["field"] == field, err


def test_a_student_too_big_is_refused_at_submission(client, teacher_id):
    body = _job(teacher_id, {"builtin": "digits"})
    body["student"]["arch_params"] = {"hidden_sizes": [65_536] * 16}
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert err["errors"][0]["field"] == "student.arch_params" and "MAX_STUDENT_PARAMETERS" in err["detail"]


def test_precomputed_logits_cannot_label_extra_inputs(client, npz_files):
    (logits,) = _ids(client, npz_files, "logits.npz", purpose="teacher_logits")
    train, inputs = _ids(client, npz_files, "labelled.npz", "inputs.npz")
    body = _job(logits, {"train_file_id": train, "unlabeled_file_ids": [inputs]})
    body["teacher"] = {"file_id": logits}
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert err["errors"][0]["field"] == "dataset.unlabeled_file_ids", err


@pytest.mark.slow
def test_a_job_with_only_unlabelled_training_data_runs_in_a_worker(client, worker, teacher_id, npz_files):  # noqa: F811
    inputs, test = _ids(client, npz_files, "all_inputs.npz", "test.npz")
    resp = client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs, "test_file_id": test},
                                             hp={"epochs": 2, "learning_rate": 0.01}))
    assert resp.status_code == 201, resp.text
    job = wait_for(client, resp.json()["id"], lambda j: j["status"] in ("succeeded", "failed"), worker=worker)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["evaluated_on"] == "test" and result["baseline"] is None and result["alpha"] == 0.0
    assert result["student"]["train_rows"] == {"labeled": 0, "unlabeled": 1438 - 144}  # 10 % held out to validate
    assert result["student"]["accuracy"] > 0.3 and result["student"]["agreement"] > 0.3
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    assert metrics and all(m["values"]["val_accuracy"] is None for m in metrics)  # nothing labelled to validate on
    assert all(m["values"]["val_agreement"] is not None for m in metrics)


@pytest.mark.parametrize("body_part, field", [
    ({"hyperparameters": {"epochs": True}}, "hyperparameters.epochs"),
    ({"hyperparameters": {"learning_rate": "0.1"}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"epochs": 2.0}}, "hyperparameters.epochs"),
    ({"baseline": "off"}, "baseline"),
    ({"dataset": {"builtin": "digits", "standardize": 1}}, "dataset.standardize"),
], ids=["bool-as-int", "string-as-float", "float-as-int", "string-as-bool", "int-as-bool"])
def test_request_types_are_strict(client, teacher_id, body_part, field):
    """Issue 16 item 9: lax coercion turned "epochs": true into 1 and "baseline": "off" into false."""
    body = _job(teacher_id, {"builtin": "digits"})
    for key, value in body_part.items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert any(e["field"] == field for e in err["errors"]), err


@pytest.mark.slow
def test_a_few_labels_job_reports_sane_progress_and_both_runs_rows(client, worker, teacher_id):  # noqa: F811
    """The baseline on 50 labelled rows runs many short epochs (the distilled run's step count):
    progress never passes 100 % nor shows an epoch past the run's epochs."""
    body = _job(teacher_id, {"builtin": "digits", "labels_per_class": 5}, hp={"epochs": 2, "learning_rate": 0.01})
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(job["progress"])
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert max(p["fraction"] for p in seen) <= 1.0
    bad = [p for p in seen if p.get("epoch") and p.get("epochs") and p["epoch"] > p["epochs"]]
    assert not bad, bad[:3]
    student, baseline = job["result"]["student"], job["result"]["baseline"]
    assert student["train_rows"]["labeled"] == baseline["train_rows"]["labeled"] == 50
    assert baseline["train_rows"]["unlabeled"] == 0 and student["steps"] == baseline["steps"]
    assert baseline["epochs_run"] == baseline["steps"]  # 50 rows: one step per epoch


def test_labels_in_an_unlabeled_file_must_be_classes_of_the_training_set(client, teacher_id, npz_files):
    inputs, twelve = _ids(client, npz_files, "inputs.npz", "twelve_classes.npz")
    resp = client.post("/v1/jobs", json=_job(teacher_id, {"builtin": "digits", "unlabeled_file_ids": [inputs, twelve]}))
    err = problem(resp, 422)
    assert err["errors"][0]["field"] == "dataset.unlabeled_file_ids[1]", err
    assert "labels up to 11" in err["detail"] and "10 classes" in err["detail"]


def test_without_labelled_training_rows_other_files_labels_are_checked_against_the_teacher(client, teacher_id,
                                                                                           npz_files):
    """The training file says no class; the teacher's stored description does (10 outputs)."""
    inputs, twelve = _ids(client, npz_files, "all_inputs.npz", "twelve_classes.npz")
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs, "test_file_id": twelve})),
                  422)
    assert err["errors"][0]["field"] == "dataset.test_file_id" and "the teacher predicts 10 classes" in err["detail"]
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs,
                                                                 "unlabeled_file_ids": [twelve]})), 422)
    assert err["errors"][0]["field"] == "dataset.unlabeled_file_ids[0]", err


def test_unlabeled_rows_count_toward_the_sample_limit(client, teacher_id, npz_files):
    train, inputs = _ids(client, npz_files, "one_column.npz", "one_column_inputs.npz")
    ids = [inputs] * MAX_UNLABELED_FILES  # 10 training rows + 16 × 625,000 = MAX_SAMPLES + 10
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": train, "unlabeled_file_ids": ids})),
                  422)
    assert err["errors"][0]["field"] == "dataset.unlabeled_file_ids" and "MAX_SAMPLES" in err["detail"], err
    assert f"{MAX_SAMPLES + 10:,} rows" in err["detail"]


def test_shift_needs_one_dimensional_signals(client, teacher_id, npz_files):
    (images,) = _ids(client, npz_files, "images.npz")
    err = problem(client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": images}, hp={"augment": ["shift"]})),
                  422)
    assert err["errors"][0]["field"] == "hyperparameters.augment" and "1-D signals" in err["detail"], err


def test_labelled_rows_of_unlabeled_files_count_as_labels(client, teacher_id, npz_files):
    """Training inputs without a label, plus a file with 25 labelled rows: the job has labels, so alpha
    and the baseline keep their defaults."""
    inputs, mixed = _ids(client, npz_files, "all_inputs.npz", "mixed.npz")
    resp = client.post("/v1/jobs", json=_job(teacher_id, {"train_file_id": inputs, "unlabeled_file_ids": [mixed]}))
    assert resp.status_code == 201, resp.text
    spec = resp.json()["spec"]
    assert spec["hyperparameters"]["alpha"] == 0.3 and spec["baseline"] is True
