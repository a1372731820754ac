"""Per-tenant quotas: unfinished jobs (KD_QUOTA_CONCURRENT_JOBS) and stored upload bytes
(KD_QUOTA_STORED_BYTES). Past one: 429 with Retry-After, a detail naming the quota, its limit and
the usage, and nothing stored; other tenants are unaffected."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from api import file_inspection
from jobs import lifecycle, quotas_repo, tenants_repo
from jobs.migrate import upgrade
from jobs.settings import Settings
from tests.factories import digits_job
from tests.utils import record_body_reads, problem, upload

JOB_QUOTA = 2
BYTE_QUOTA = 100_000


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request, settings, tmp_path) -> Settings:
    """Small quotas, on both databases the service runs on (SQLite: a fresh migrated file)."""
    limits = {"quota_concurrent_jobs": JOB_QUOTA, "quota_stored_bytes": BYTE_QUOTA}
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kd.sqlite3'}"
        upgrade(url)
        limits["database_url"] = url
    return settings.model_copy(update=limits)


@pytest.fixture
def teacher_id(client, digits_teacher) -> str:
    return upload(client, digits_teacher[0], "teacher").json()["id"]


def job_ids(client, headers=None) -> list[str]:
    return [j["id"] for j in client.get("/v1/jobs", headers=headers).json()["data"]]


def refused(resp, quota: str, limit: int, used: int, retry_after: str) -> dict:
    err = problem(resp, 429)
    assert err["type"] == "urn:kd:problem:quota-exceeded"
    assert resp.headers["retry-after"] == retry_after
    assert quota in err["detail"] and f"limit is {limit}" in err["detail"] and str(used) in err["detail"]
    return err


# --- concurrent jobs ------------------------------------------------------------------------------

def test_past_the_job_quota_is_429_with_retry_after_and_creates_nothing(client, teacher_id):
    ids = [client.post("/v1/jobs", json=digits_job(teacher_id)).json()["id"] for _ in range(JOB_QUOTA)]
    resp = client.post("/v1/jobs", json=digits_job(teacher_id))
    err = refused(resp, "concurrent jobs quota", JOB_QUOTA, JOB_QUOTA, "30")
    assert f"this tenant has {JOB_QUOTA}" in err["detail"]
    assert sorted(job_ids(client)) == sorted(ids)


def test_cancelling_frees_a_slot_once_the_job_has_stopped(client, teacher_id):
    running, queued = (client.post("/v1/jobs", json=digits_job(teacher_id)).json()["id"] for _ in range(JOB_QUOTA))
    with client.app.state.sessionmaker() as session:
        attempt = lifecycle.claim(session, job_id=running, lease_seconds=60, worker="test")
        session.commit()
    assert client.post(f"/v1/jobs/{running}/cancel").json()["status"] == "cancelling"
    refused(client.post("/v1/jobs", json=digits_job(teacher_id)), "concurrent jobs", JOB_QUOTA, JOB_QUOTA, "30")

    assert client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"  # queued: at once
    freed = client.post("/v1/jobs", json=digits_job(teacher_id))
    assert freed.status_code == 201, freed.text
    refused(client.post("/v1/jobs", json=digits_job(teacher_id)), "concurrent jobs", JOB_QUOTA, JOB_QUOTA, "30")

    with client.app.state.sessionmaker() as session:  # the worker stops: cancelling -> cancelled
        assert lifecycle.finish_cancelled(session, job_id=running, attempt=attempt)
        session.commit()
    assert client.post("/v1/jobs", json=digits_job(teacher_id)).status_code == 201


def test_finished_jobs_do_not_count(client, teacher_id):
    first = client.post("/v1/jobs", json=digits_job(teacher_id)).json()["id"]
    with client.app.state.sessionmaker() as session:
        attempt = lifecycle.claim(session, job_id=first, lease_seconds=60, worker="test")
        assert lifecycle.fail(session, job_id=first, attempt=attempt, code="boom", message="boom")
        session.commit()
    for _ in range(JOB_QUOTA):
        assert client.post("/v1/jobs", json=digits_job(teacher_id)).status_code == 201


def test_the_job_quota_is_per_tenant(client, teacher_id, digits_teacher, other_tenant_headers):
    for _ in range(JOB_QUOTA):
        client.post("/v1/jobs", json=digits_job(teacher_id))
    problem(client.post("/v1/jobs", json=digits_job(teacher_id)), 429)
    theirs = upload(client, digits_teacher[0], "teacher", headers=other_tenant_headers).json()["id"]
    for _ in range(JOB_QUOTA):
        resp = client.post("/v1/jobs", json=digits_job(theirs), headers=other_tenant_headers)
        assert resp.status_code == 201, resp.text
    assert len(job_ids(client, headers=other_tenant_headers)) == JOB_QUOTA


def test_a_request_refused_by_the_quota_releases_its_idempotency_key(client, teacher_id):
    ids = [client.post("/v1/jobs", json=digits_job(teacher_id)).json()["id"] for _ in range(JOB_QUOTA)]
    headers = {"Idempotency-Key": "after-the-quota"}
    problem(client.post("/v1/jobs", json=digits_job(teacher_id), headers=headers), 429)
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    resp = client.post("/v1/jobs", json=digits_job(teacher_id), headers=headers)
    assert resp.status_code == 201 and "idempotent-replayed" not in resp.headers
    # ...and its replay is not refused even though the tenant is at the quota again.
    replay = client.post("/v1/jobs", json=digits_job(teacher_id), headers=headers)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"


# --- stored bytes ---------------------------------------------------------------------------------

def dataset(tmp_path, name: str, rows: int):
    """An .npz dataset of about rows * 20 bytes."""
    path = tmp_path / name
    np.savez(path, x=np.random.rand(rows, 5).astype(np.float32), y=np.arange(rows) % 3)
    return path


def stored_files(settings) -> list:
    root = settings.artifacts_path
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def file_ids(client, headers=None) -> list[str]:
    return [f["id"] for f in client.get("/v1/files", headers=headers).json()["data"]]


def test_past_the_byte_quota_is_429_and_nothing_is_stored(client, settings, tmp_path):
    first = upload(client, dataset(tmp_path, "a.npz", 2000), "dataset").json()
    assert 0.5 * BYTE_QUOTA < first["bytes"] < BYTE_QUOTA  # so a second one cannot fit
    second = dataset(tmp_path, "b.npz", 2000)
    err = refused(upload(client, second, "dataset"), "stored bytes quota", BYTE_QUOTA, first["bytes"], "3600")
    assert f"adds {second.stat().st_size}" in err["detail"]  # refused after streaming: the exact size
    assert file_ids(client) == [first["id"]]
    assert len(stored_files(settings)) == 1
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_deleting_a_file_makes_room(client, tmp_path):
    first = upload(client, dataset(tmp_path, "a.npz", 2000), "dataset").json()
    second = dataset(tmp_path, "b.npz", 2000)
    problem(upload(client, second, "dataset"), 429)
    assert client.delete(f"/v1/files/{first['id']}").status_code == 204
    assert upload(client, second, "dataset").status_code == 201


def test_a_declared_length_over_the_quota_is_refused_before_the_body_is_read(client, settings, tmp_path,
                                                                              monkeypatch):
    reads = record_body_reads(monkeypatch)
    big = tmp_path / "big.npz"
    big.write_bytes(b"\0" * (BYTE_QUOTA + 200_000))  # under the 2 MiB upload cap, over the quota
    err = refused(upload(client, big, "dataset"), "stored bytes quota", BYTE_QUOTA, 0, "3600")
    assert "adds at least" in err["detail"]
    assert reads == []
    assert file_ids(client) == [] and stored_files(settings) == []


def test_a_streamed_upload_over_the_quota_is_refused_and_removed(client, settings):
    def chunks():  # no Content-Length: only the received size can tell
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n"
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npz\"\r\n\r\n"
        for _ in range(3):
            yield b"\1" * 65536
        yield b"\r\n--XyZ--\r\n"

    resp = client.post("/v1/files", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    err = refused(resp, "stored bytes quota", BYTE_QUOTA, 0, "3600")
    assert f"adds {3 * 65536}" in err["detail"]
    assert file_ids(client) == [] and stored_files(settings) == []
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_the_decisive_check_runs_after_inspection_so_a_concurrent_upload_cannot_overfill(
        client, settings, tmp_path, monkeypatch):
    first, second = dataset(tmp_path, "a.npz", 2000), dataset(tmp_path, "b.npz", 2000)
    seen = {}
    original = file_inspection.inspect_upload

    def slow_inspect(path, purpose, limits):
        if not seen:  # while the first upload is inspected (it passed the early check), another lands
            seen["other"] = None
            seen["other"] = upload(client, second, "dataset")
        return original(path, purpose, limits)

    monkeypatch.setattr(file_inspection, "inspect_upload", slow_inspect)
    resp = upload(client, first, "dataset")
    assert seen["other"].status_code == 201
    refused(resp, "stored bytes quota", BYTE_QUOTA, seen["other"].json()["bytes"], "3600")
    assert file_ids(client) == [seen["other"].json()["id"]]
    assert len(stored_files(settings)) == 1
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_the_tenant_lock_serialises_quota_checks(client):
    """Two transactions of one tenant: the second waits at lock_tenant until the first commits."""
    with client.app.state.sessionmaker() as session:
        tenant_id = tenants_repo.get_by_name(session, name="default").id
    locked = threading.Event()

    def second():
        with client.app.state.sessionmaker() as other:
            quotas_repo.lock_tenant(other, tenant_id=tenant_id)
            locked.set()
            other.rollback()

    with client.app.state.sessionmaker() as first:
        quotas_repo.lock_tenant(first, tenant_id=tenant_id)
        thread = threading.Thread(target=second)
        thread.start()
        assert not locked.wait(0.5)
        first.rollback()
    assert locked.wait(30)
    thread.join()


def test_a_replayed_upload_is_not_refused_by_the_quota(client, settings, tmp_path):
    path = dataset(tmp_path, "a.npz", 3000)
    headers = {"Idempotency-Key": "upload-1"}
    first = upload(client, path, "dataset", headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["bytes"] + path.stat().st_size - 65536 > BYTE_QUOTA  # its Content-Length alone: over
    replay = upload(client, path, "dataset", headers=headers)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content and len(stored_files(settings)) == 1


def test_the_byte_quota_is_per_tenant(client, settings, tmp_path, other_tenant_headers):
    upload(client, dataset(tmp_path, "a.npz", 2000), "dataset")
    problem(upload(client, dataset(tmp_path, "b.npz", 2000), "dataset"), 429)
    theirs = upload(client, dataset(tmp_path, "c.npz", 2000), "dataset", headers=other_tenant_headers)
    assert theirs.status_code == 201, theirs.text
    assert file_ids(client, headers=other_tenant_headers) == [theirs.json()["id"]]
    assert len(stored_files(settings)) == 2


def test_the_defaults(tmp_path, monkeypatch):
    for name in ("KD_QUOTA_STORED_BYTES", "KD_QUOTA_CONCURRENT_JOBS", "KD_IDEMPOTENCY_TTL_SECONDS",
                 "KD_IDEMPOTENCY_IN_FLIGHT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(data_dir=tmp_path)
    assert (s.quota_stored_bytes, s.quota_concurrent_jobs) == (10 * 1024**3, 4)
    assert (s.idempotency_ttl_seconds, s.idempotency_in_flight_seconds) == (86400, 3600)
