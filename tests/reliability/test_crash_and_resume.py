"""R2 Crash and resume, R8 Damaged checkpoints: a worker killed mid-training (SIGKILL) leaves its
job to the next worker, which re-claims it once the lease has expired, resumes from the newest
checkpoint that verifies, and ends with the very weights an uninterrupted run produces."""

from __future__ import annotations

import pytest

from kdcore.checkpoint import list_checkpoints
from tests.reliability.checks import assert_each_epoch_reported_once, assert_one_artifact_per_kind
from tests.utils import assert_same_weights, wait_for_checkpoint

pytestmark = pytest.mark.slow
EPOCHS = 10


def test_a_killed_workers_job_resumes_from_its_checkpoint_and_ends_bit_identical(
        service, digits_teacher, reference_students):
    svc = service()
    workers = svc.start_workers("one", "two")
    job = svc.submit(digits_teacher, epochs=EPOCHS)
    wait_for_checkpoint(svc, job["id"], 1)
    first = svc.owner(job["id"])
    svc.kill(first)  # mid-training: somewhere in epoch 2 or later
    (second,) = [w for w in workers if w is not first]

    want_weights, want_metrics = reference_students(job["spec"], digits_teacher[0])  # meanwhile
    job = svc.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=90,
                       what="end")
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2

    events = svc.events(job["id"])
    claimed = [e["attempt"] for e in events if e["type"] == "claimed"]
    assert claimed == [1, 2]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["attempt"] == 2 and resumed[0]["data"]["run"] == "student"
    assert 1 <= resumed[0]["data"]["epoch"] < EPOCHS
    assert not [e for e in events if e["type"] == "checkpoint_skipped"]
    assert_each_epoch_reported_once(svc, job["id"], runs=("student",), epochs=EPOCHS)
    assert_one_artifact_per_kind(svc, job["id"])
    assert svc.owner(job["id"]) is second

    assert_same_weights(svc.student_weights(job["id"]), want_weights)
    # the metric rows, the attempt that wrote them notwithstanding, are the uninterrupted run's
    got = {(m["run"], m["epoch"]): {k: v for k, v in m["values"].items() if k != "seconds"}
           for m in svc.metrics(job["id"])}
    assert got == {(m["run"], m["epoch"]): {k: v for k, v in m.items() if k != "seconds"} for m in want_metrics}


def test_a_damaged_newest_checkpoint_is_skipped_and_the_one_before_resumed(
        service, digits_teacher, reference_students):
    svc = service()
    svc.start_workers("one", "two")
    job = svc.submit(digits_teacher, epochs=EPOCHS)
    wait_for_checkpoint(svc, job["id"], 2)
    svc.kill(svc.owner(job["id"]))

    directory = svc.settings.artifacts_path / "jobs" / job["id"] / "checkpoints" / "student"
    files = list_checkpoints(directory)
    assert len(files) >= 2, files  # the two newest are kept (three if it died before pruning)
    older, newest = files[-2:]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short

    want_weights, _ = reference_students(job["spec"], digits_teacher[0])
    job = svc.wait_for(job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=90, what="end")
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2

    events = svc.events(job["id"])
    skipped = [e for e in events if e["type"] == "checkpoint_skipped"]
    assert len(skipped) == 1 and skipped[0]["attempt"] == 2
    assert skipped[0]["data"]["path"] == newest.name and "truncated" in skipped[0]["data"]["reason"]
    resumed = [e for e in events if e["type"] == "resumed"]
    older_epoch = int(older.stem.split("-")[1])
    assert [(e["attempt"], e["data"]["epoch"]) for e in resumed] == [(2, older_epoch)]
    # the epochs after the older checkpoint were trained (and reported) twice: recorded once
    assert_each_epoch_reported_once(svc, job["id"], runs=("student",), epochs=EPOCHS)
    newest_epoch = int(newest.stem.split("-")[1])
    assert [e["attempt"] for e in events if e["type"] == "epoch" and e["data"]["epoch"] == newest_epoch] == [1]
    assert_one_artifact_per_kind(svc, job["id"])
    assert_same_weights(svc.student_weights(job["id"]), want_weights)
