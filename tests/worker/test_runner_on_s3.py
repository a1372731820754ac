"""worker.runner on the S3 store, in-process: a job's inputs come from the bucket into the attempt's
own directory, every training run's checkpoints (sweep points included) end up in the
bucket, the artifacts are published there, and nothing is written to a directory store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.artifact_store import make_store
from jobs.settings import Settings
from tests.factories import digits_job
from tests.utils import API_KEY, upload
from worker.context import WorkerContext
from worker.runner import run_job

pytestmark = pytest.mark.slow


def test_a_sweep_job_runs_from_the_bucket_and_checkpoints_every_run_to_it(clean_pg, redis_url, s3_env, tmp_path,
                                                                          digits_teacher, monkeypatch):
    store_settings = {k.removeprefix("KD_").lower(): v for k, v in s3_env.items()}
    api_cfg = Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "api",
                       bootstrap_api_key=API_KEY, **store_settings)
    worker_cfg = Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "worker",
                          **store_settings)
    path, arch = digits_teacher
    with TestClient(create_app(api_cfg), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        teacher = upload(client, path, "teacher").json()
        resp = client.post("/v1/jobs", json=digits_job(
            teacher["id"], arch=arch, dataset={"builtin": "digits", "standardize": True}, baseline=False,
            hyperparameters={"learning_rate": 0.01, "batch_size": 64, "alpha": [0.3, 0.7]}))
        assert resp.status_code == 201, resp.text
        job_id = resp.json()["id"]

        fetched = []
        store = make_store(worker_cfg)
        real_fetch = store.fetch
        monkeypatch.setattr(store, "fetch", lambda key, dest, **kw: fetched.append((key, dest, kw)) or
                            real_fetch(key, dest, **kw))
        assert run_job(job_id, WorkerContext.build(worker_cfg, store=store)) == "succeeded"
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        student = client.get(f"/v1/jobs/{job_id}/student")
        assert student.status_code == 200 and len(student.content) > 1000

    # The teacher came from the bucket, verified against the sha256 recorded at upload.
    (key, dest, kw), = [f for f in fetched if f[0].startswith("files/")]
    assert kw == {"sha256": teacher["sha256"]} and dest.is_relative_to(tmp_path / "worker" / "work" / job_id)
    # Without a baseline, only the sweep points' checkpoints exist: they reach the bucket through the
    # `sweep_checkpoint` events (the sweep's runs do not call the job's on_checkpoint).
    runs = {k.split("/")[3] for k in store.list_keys(f"jobs/{job_id}/checkpoints")}
    assert runs == {"student-0", "student-1"}, runs
    assert all(store.exists(a) for a in store.list_keys(f"jobs/{job_id}/attempt-1"))
    assert {k.rsplit("/", 1)[1] for k in store.list_keys(f"jobs/{job_id}/attempt-1")} >= {"student.safetensors",
                                                                                          "summary.json"}
    # No directory store anywhere, and the worker cleaned up its scratch directory.
    assert not api_cfg.artifacts_path.exists() and not worker_cfg.artifacts_path.exists()
    assert not (tmp_path / "worker" / "work" / job_id).exists()
