"""R10 Resume on another machine (issue 8): two workers that share no disk, only PostgreSQL, Redis
and an S3 artifact store (moto's S3 server). Each has its own KD_DATA_DIR, the API a third. The
job's first worker is killed (SIGKILL) after a checkpoint; the second re-claims the job, pulls the
newest checkpoint from the store, resumes from it, and ends with the weights of an uninterrupted
run, bit for bit."""

from __future__ import annotations

import pytest

from jobs.artifact_store import make_store
from kdcore.checkpoint import list_checkpoints
from tests.reliability.checks import assert_each_epoch_reported_once, assert_one_artifact_per_kind
from tests.utils import assert_same_weights, wait_for_checkpoint

EPOCHS = 10

pytestmark = pytest.mark.slow


def test_a_job_killed_on_one_machine_finishes_on_another_from_the_stores_checkpoint(
        service, s3_env, monkeypatch, digits_teacher, reference_students, tmp_path):
    for name, value in s3_env.items():  # the in-process API reads its store settings from KD_*
        monkeypatch.setenv(name, value)
    svc = service(**s3_env)
    assert svc.settings.artifact_url == s3_env["KD_ARTIFACT_URL"]
    disks = {name: tmp_path / f"machine-{name}" for name in ("one", "two")}
    base_env = svc.env
    for name, disk in disks.items():  # each worker on its own "machine": its own data directory
        svc.env = {**base_env, "KD_DATA_DIR": str(disk)}
        svc.start_worker(name, wait=False)
    svc.env = base_env
    for proc in svc.workers.values():
        proc.wait_for_output("ready.", timeout=90)

    job = svc.submit(digits_teacher, epochs=EPOCHS)
    wait_for_checkpoint(svc, job["id"], 2)
    first = svc.owner(job["id"])
    svc.kill(first)
    second = next(p for p in svc.workers.values() if p is not first)
    first_disk, second_disk = disks[first.name], disks[second.name]
    # What the killed worker left on its own disk: its attempt's inputs and checkpoints.
    left_behind = first_disk / "work" / job["id"] / "attempt-1"
    assert list_checkpoints(left_behind / "checkpoints" / "student"), "the first worker checkpointed locally"
    assert (left_behind / "inputs").is_dir()

    want_weights, want_metrics = reference_students(job["spec"], digits_teacher[0])  # meanwhile
    job = svc.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=120, what="end")
    assert job["status"] == "succeeded", (job, svc.worker_logs())
    assert job["attempt"] == 2 and svc.owner(job["id"]) is second

    events = svc.events(job["id"])
    resumed = [e for e in events if e["type"] == "resumed"]
    # The second machine never saw the first one's disk: its checkpoint came from the store.
    assert len(resumed) == 1 and resumed[0]["attempt"] == 2 and 2 <= resumed[0]["data"]["epoch"] < EPOCHS
    assert not [e for e in events if e["type"] == "checkpoint_skipped"]
    assert_each_epoch_reported_once(svc, job["id"], runs=("student",), epochs=EPOCHS)
    assert_one_artifact_per_kind(svc, job["id"])
    assert_same_weights(svc.student_weights(job["id"]), want_weights)
    got = {(m["run"], m["epoch"]): {k: v for k, v in m["values"].items() if k != "seconds"}
           for m in svc.metrics(job["id"])}
    assert got == {(m["run"], m["epoch"]): {k: v for k, v in m.items() if k != "seconds"} for m in want_metrics}

    # Everything lives in the store: artifacts, and the checkpoints a later attempt would need.
    store = make_store(svc.settings)
    assert all(store.exists(a.storage_key) for a in svc.artifacts(job["id"]))
    assert store.list_keys(f"jobs/{job['id']}/checkpoints/student")
    # No process wrote a directory store; the second machine cleaned up after its attempt.
    assert not svc.settings.artifacts_path.exists() and not first_disk.joinpath("artifacts").exists()
    assert not (second_disk / "work" / job["id"]).exists()
