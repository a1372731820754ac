"""kdclient.Client against the real API in-process (PostgreSQL + Redis, no worker): typed results,
pagination, cancellation, waiting, and errors that carry the problem's detail and field."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from kdclient import ApiError, Client, File, Job, KDClientError, Page, WaitTimeout
from tests.factories import digits_job


def test_upload_list_get_delete(kd, digits_teacher):
    path, _ = digits_teacher
    f = kd.upload_file(path, "teacher")
    assert isinstance(f, File) and f.id.startswith("file_")
    assert f.purpose == "teacher" and f.format == "safetensors" and f.kind == "state_dict"
    assert f.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and f.bytes == path.stat().st_size
    assert f.num_classes == 10 and f.parameters > 0 and f.created_at is not None

    page = kd.list_files()
    assert isinstance(page, Page) and [x.id for x in page] == [f.id] and not page.has_more
    assert page.next_after is None
    assert kd.list_files(purpose="dataset").data == []
    assert kd.get_file(f.id) == f
    assert [x.id for x in kd.iter_files()] == [f.id]

    kd.delete_file(f.id)
    with pytest.raises(ApiError) as e:
        kd.get_file(f.id)
    assert e.value.status == 404 and e.value.title == "Not Found" and f.id in e.value.detail


def test_create_list_page_get_cancel_wait(kd, teacher):
    file, arch = teacher
    ids = [kd.create_job(digits_job(file.id, arch=arch)).id for _ in range(3)]
    job = kd.get_job(ids[0])
    assert isinstance(job, Job) and job.status == "queued" and not job.done
    assert job.spec["hyperparameters"]["temperature"] == 4.0  # defaults resolved and echoed
    assert job.progress.fraction == 0.0 and job.error is None and job.result is None

    first = kd.list_jobs(limit=2)
    assert [j.id for j in first] == ids[::-1][:2] and first.has_more and first.next_after == ids[1]
    second = kd.list_jobs(limit=2, after=first.next_after)
    assert [j.id for j in second] == [ids[0]] and not second.has_more
    assert [j.id for j in kd.iter_jobs(page_size=2)] == ids[::-1]
    assert [j.id for j in kd.list_jobs(status="queued")] == ids[::-1]

    cancelled = kd.cancel_job(ids[1])
    assert cancelled.status == "cancelled" and cancelled.done
    seen = []
    assert kd.wait(ids[1], on_update=seen.append).status == "cancelled"
    assert [j.status for j in seen] == ["cancelled"]
    assert [j.id for j in kd.list_jobs(status="cancelled")] == [ids[1]]
    with pytest.raises(ApiError) as e:
        kd.cancel_job(ids[1])
    assert e.value.status == 409 and e.value.detail
    assert kd.metrics(ids[1]) == []
    events = kd.events(ids[1])
    assert all(ev.id > 0 and ev.type for ev in events)
    assert kd.events(ids[1], after=events[-1].id if events else 0) == []


def test_wait_times_out_with_the_last_state(kd, teacher):
    file, arch = teacher
    job = kd.create_job(digits_job(file.id, arch=arch))
    with pytest.raises(WaitTimeout) as e:
        kd.wait(job.id, poll=0.05, timeout=0.2)
    assert e.value.job.id == job.id and e.value.job.status == "queued"


def test_a_retried_submission_with_the_same_idempotency_key_creates_one_job(kd, teacher):
    file, arch = teacher
    a = kd.create_job(digits_job(file.id, arch=arch), idempotency_key="same-key")
    b = kd.create_job(digits_job(file.id, arch=arch), idempotency_key="same-key")
    assert a.id == b.id and len(kd.list_jobs()) == 1


def test_errors_carry_the_problem_detail_and_field(kd, teacher, client, tmp_path):
    file, arch = teacher
    with pytest.raises(ApiError) as e:
        kd.create_job(digits_job(file.id, arch=arch, hyperparameters={"alpha": 2}))
    err = e.value
    assert err.status == 422 and err.field == "hyperparameters.alpha"
    assert "hyperparameters.alpha" in err.detail and err.errors[0].reason
    assert err.type == "urn:kd:problem:invalid-field" and isinstance(err, KDClientError)
    assert str(err).startswith("422 ")

    with pytest.raises(ApiError) as e:
        kd.create_job({**digits_job(file.id, arch=arch), "tenant": "x"})
    assert e.value.status == 422 and e.value.field == "tenant"

    with pytest.raises(ApiError) as e:
        kd.get_job("job_nope")
    assert (e.value.status, e.value.title) == (404, "Not Found") and "job_nope" in e.value.detail

    with pytest.raises(ApiError) as e:
        kd.upload_file(__file__, "teacher")  # a Python file is no teacher
    assert e.value.status == 422 and e.value.field == "file"

    with pytest.raises(ApiError) as e:
        kd.download_student("job_nope", tmp_path / "unused.safetensors")
    assert e.value.status == 404

    stranger = Client(api_key="kd_wrong_" + "x" * 40, http_client=httpx.Client(
        transport=client._transport, base_url=client.base_url), max_retries=0)
    with pytest.raises(ApiError) as e:
        stranger.list_jobs()
    assert e.value.status == 401 and e.value.detail


def test_the_student_cannot_be_downloaded_before_the_job_succeeded(kd, teacher, tmp_path):
    file, arch = teacher
    job = kd.create_job(digits_job(file.id, arch=arch))
    with pytest.raises(ApiError) as e:
        kd.download_student(job.id, tmp_path / "out" / "student.safetensors")
    assert e.value.status == 409 and "queued" in e.value.detail
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(KDClientError):
        kd.download_student(job.id, tmp_path / "s", format="pickle")


def test_create_job_sends_the_unlabelled_fields_as_given_and_reads_the_new_result(fake_service, tmp_path):
    """Captured by a FakeService, so this holds whatever the server accepts today."""
    kd = fake_service.client()
    data = tmp_path / "inputs.npz"
    data.write_bytes(b"x")
    f = kd.upload_file(data, "dataset")
    assert (f.num_samples, f.num_labeled) == (1193, 0) and f.raw["num_labeled"] == 0
    spec = {"teacher": {"file_id": "file_t"}, "dataset": {"train_file_id": "file_l", "unlabeled_file_ids": [f.id],
                                                          "labels_per_class": 10},
            "hyperparameters": {"augment": ["shift", "mixup"], "shift_max": 4, "mixup_alpha": 0.4}}
    job = kd.create_job(spec)
    assert fake_service.posted("/v1/jobs")[0]["json"] == spec
    done = kd.wait(job.id, poll=0.01)
    assert done.succeeded and done.result["student"]["accuracy"] is None
    assert done.result["student"]["train_rows"] == {"labeled": 100, "unlabeled": 1193}
    assert done.result["baseline"]["steps"] == done.result["student"]["steps"] == 220
    # a file description without num_labeled (an older server, or a teacher) reads as None
    assert File.from_dict({"id": "file_x", "num_samples": 5}).num_labeled is None
