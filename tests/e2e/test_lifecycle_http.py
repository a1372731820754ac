"""The whole lifecycle over HTTP against real processes (`python -m api` under uvicorn and
`python -m worker`), on the production stack (PostgreSQL + Redis) and on the embedded default
(SQLite + the SQLAlchemy broker transport: nothing to install), and once more on the production
stack with the S3 artifact store (moto's S3 server), where the API and the worker have separate
data directories: they share no disk, as on two machines."""

from __future__ import annotations

import hashlib
import time

import jsonschema
import pytest

from jobs.migrate import upgrade
from tests.factories import digits_job

pytestmark = pytest.mark.slow
KEY = "kd_e2e_" + "e" * 40


@pytest.fixture(params=["production", "embedded", "production-s3"])
def stack(request, tmp_path, live_stack):
    data = tmp_path / "data"
    store_env = request.getfixturevalue("s3_env") if request.param == "production-s3" else {}
    urls = {}
    if request.param == "embedded":
        urls = dict(database_url=f"sqlite:///{data}/kd.sqlite3", broker_url=f"sqla+sqlite:///{data}/broker.sqlite3")
        data.mkdir(parents=True)
        upgrade(urls["database_url"])
    # with S3 the worker has a data directory of its own: it shares no disk with the API
    worker_env = {"KD_DATA_DIR": str(tmp_path / "worker-data")} if store_env else None
    running = live_stack(api_key=KEY, worker_env=worker_env, KD_HEARTBEAT_SECONDS="0.5", KD_LEASE_SECONDS="10",
                         **urls, **store_env)
    with running.client() as client:
        yield client, running.workers[0], running.api


def test_upload_submit_watch_download(stack, digits_teacher):
    client, worker, api = stack
    assert client.get("/readyz").json()["status"] == "ready"
    path, arch = digits_teacher
    with open(path, "rb") as f:
        up = client.post("/v1/files", files={"file": ("teacher.safetensors", f)}, data={"purpose": "teacher"})
    assert up.status_code == 201, up.text
    job = client.post("/v1/jobs", json=digits_job(
        up.json()["id"], arch=arch, dataset={"builtin": "digits", "standardize": True},
        hyperparameters={"epochs": 3, "learning_rate": 0.01}))
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    seen_statuses, fractions = [], []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = client.get(f"/v1/jobs/{job_id}").json()
        seen_statuses.append(state["status"])
        fractions.append(state["progress"]["fraction"])
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.25)
    assert state["status"] == "succeeded", (state, worker.output()[-3000:])
    assert fractions == sorted(fractions), "progress never goes backwards"
    assert state["result"]["student"]["accuracy"] > 0.1 and state["result"]["baseline"] is not None
    # the job as served is what /openapi.json says: the spec a valid request body, the result typed
    components = client.get("/openapi.json").json()["components"]
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/JobOut", "components": components}).validate(state)
    result_schema = components["schemas"]["JobOut"]["properties"]["result"]["anyOf"][0]
    assert set(state["result"]) == set(result_schema["properties"])
    assert set(state["result"]["student"]) == set(result_schema["properties"]["student"]["properties"])

    student = client.get(f"/v1/jobs/{job_id}/student")
    assert student.headers["etag"] == f'"{hashlib.sha256(student.content).hexdigest()}"'
    tail = client.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=100-"})
    assert tail.status_code == 206 and tail.content == student.content[100:]
    assert len(client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]) == 6
    assert "Traceback" not in client.get("/v1/jobs/job_nope").text


@pytest.mark.parametrize("stack", ["production-s3"], indirect=True)  # the worker fetches every file from S3
def test_a_job_whose_training_data_has_no_label(stack, digits_teacher, tmp_path):
    """Issue 12: x-only uploads (a training file and an unlabelled input file), no test file. The
    teacher labels everything, the student trains with alpha 0 and no baseline, and the result scores
    agreement with the teacher on the (unlabelled) validation split; accuracy is null."""
    import numpy as np

    from kdcore.data import load_builtin

    client, worker, api = stack
    x = load_builtin("digits")["train"].x.numpy()
    np.savez(tmp_path / "inputs_a.npz", x=x[:800])
    np.savez(tmp_path / "inputs_b.npz", x=x[800:])
    ids = []
    for name, purpose in (("inputs_a.npz", "dataset"), ("inputs_b.npz", "dataset"), (digits_teacher[0], "teacher")):
        with open(tmp_path / name, "rb") as f:
            up = client.post("/v1/files", files={"file": (str(name).rsplit("/", 1)[-1], f)}, data={"purpose": purpose})
        assert up.status_code == 201, up.text
        ids.append(up.json())
    assert ids[0]["num_labeled"] == 0 and ids[1]["num_labeled"] == 0
    job = client.post("/v1/jobs", json={
        "teacher": {"file_id": ids[2]["id"], **digits_teacher[1]},
        "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
        "dataset": {"train_file_id": ids[0]["id"], "unlabeled_file_ids": [ids[1]["id"]]},
        "hyperparameters": {"epochs": 2, "learning_rate": 0.01}})
    assert job.status_code == 201, job.text
    spec = job.json()["spec"]
    assert spec["hyperparameters"]["alpha"] == 0.0 and spec["baseline"] is False
    job_id = job.json()["id"]
    deadline = time.monotonic() + 180
    while (state := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.25)
    assert state["status"] == "succeeded", (state, worker.output()[-3000:])
    result = state["result"]
    assert result["evaluated_on"] == "validation" and result["alpha"] == 0.0 and result["baseline"] is None
    assert result["student"]["accuracy"] is None and result["student"]["agreement"] > 0.3
    assert result["student"]["train_rows"] == {"labeled": 0, "unlabeled": 720 + len(x) - 800}  # 80 validate
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    outcome = [e["message"] for e in events if e["type"] == "result"]
    assert outcome and outcome[0].startswith("student agreement with the teacher "), outcome
    assert all("val agreement" in e["message"] for e in events if e["type"] == "epoch")
    report = client.get(f"/v1/jobs/{job_id}/report").text
    assert "agrees with the teacher" in report and f"0 labelled + {720 + len(x) - 800:,} unlabelled" in report
