"""DELETE /v1/files/{id} racing POST /v1/jobs that names the file (issue 16 items 7 and 9).

The rule: a submission either sees the file, and then a delete of it is a 409 while the job is
unfinished (the file is kept), or the delete wins and the submission is a 422 naming the field,
nothing stored. Before: the delete could land while the job was checked (a FileNotFoundError 500)
or between the check and the insert (the job accepted with a deleted file, 12 of 15 races on
PostgreSQL, and failed later with `invalid_input`). The hooks below put the delete at each of those
points, on both databases the service runs on; the last test races them freely."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from api import quotas, spec_resolution
from jobs import jobs_repo
from jobs.migrate import upgrade
from jobs.settings import Settings
from tests.factories import digits_job
from tests.utils import problem, upload


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request, settings, tmp_path) -> Settings:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kd.sqlite3'}"
        upgrade(url)
        return settings.model_copy(update={"database_url": url, "quota_concurrent_jobs": 100})
    return settings.model_copy(update={"quota_concurrent_jobs": 100})


def job_body(teacher_id: str) -> dict:
    return digits_job(teacher_id, hyperparameters={"epochs": 1})


def stored_objects(settings) -> list:
    root = settings.artifacts_path
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_file_deleted_while_its_header_is_read_is_a_422_not_a_500(client, settings, digits_teacher, monkeypatch):
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    deletes = []
    real = spec_resolution.check_state_dict_teacher

    def delete_first(*args, **kwargs):  # the delete commits and removes the object, then the header is read
        deletes.append(client.delete(f"/v1/files/{teacher}").status_code)
        return real(*args, **kwargs)

    monkeypatch.setattr(spec_resolution, "check_state_dict_teacher", delete_first)
    err = problem(client.post("/v1/jobs", json=job_body(teacher)), 422)  # was a 500 (FileNotFoundError)
    assert deletes == [204]
    assert err["errors"] == [{"field": "teacher.file_id", "reason": err["errors"][0]["reason"]}]
    assert "deleted" in err["detail"] and teacher in err["detail"]
    assert client.get("/v1/jobs").json()["data"] == []


def test_a_file_deleted_after_the_checks_is_a_422_and_no_job_is_stored(client, settings, digits_teacher, monkeypatch):
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    deletes = []
    real = quotas.take_job_slot

    def delete_first(*args, **kwargs):  # every check passed; the delete commits before the insert
        deletes.append(client.delete(f"/v1/files/{teacher}").status_code)
        return real(*args, **kwargs)

    monkeypatch.setattr(quotas, "take_job_slot", delete_first)
    err = problem(client.post("/v1/jobs", json=job_body(teacher)), 422)  # was a 201 for a job that then failed
    assert deletes == [204]
    assert err["errors"][0]["field"] == "teacher.file_id" and "deleted" in err["detail"]
    assert client.get("/v1/jobs").json()["data"] == []
    assert client.get(f"/v1/files/{teacher}").status_code == 404 and stored_objects(settings) == []


def test_a_delete_that_arrives_while_the_job_is_inserted_is_a_409_and_keeps_the_file(
        client, settings, digits_teacher, monkeypatch):
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    deletes = []
    real = jobs_repo.create

    def delete_meanwhile(*args, **kwargs):  # the delete arrives while the job is being inserted
        thread = threading.Thread(target=lambda: deletes.append(client.delete(f"/v1/files/{teacher}")))
        thread.start()
        thread.join(timeout=1.5)  # with the fix it waits for the tenant's lock, which this request holds
        deletes.append(thread)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_repo, "create", delete_meanwhile)
    created = client.post("/v1/jobs", json=job_body(teacher))
    assert created.status_code == 201, created.text
    thread = next(d for d in deletes if isinstance(d, threading.Thread))
    thread.join(timeout=30)
    (resp,) = [d for d in deletes if not isinstance(d, threading.Thread)]
    err = problem(resp, 409)  # was a 204: the queued job named a file that no longer existed
    assert created.json()["id"] in err["detail"]
    assert client.get(f"/v1/files/{teacher}").status_code == 200 and len(stored_objects(settings)) == 1


def test_free_races_never_accept_a_job_for_a_deleted_file(client, settings, digits_teacher):
    """15 rounds of a submission and a delete started together, the delete 0 to 56 ms later: each
    round ends 201 + 409 or 422 + 204 (before: 201 + 204 in several rounds, or a 500)."""
    outcomes = []
    for i in range(15):
        teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
        barrier = threading.Barrier(2)

        def submit():
            barrier.wait()
            return client.post("/v1/jobs", json=job_body(teacher))

        def delete():
            barrier.wait()
            time.sleep(0.004 * i)
            return client.delete(f"/v1/files/{teacher}")

        with ThreadPoolExecutor(2) as pool:
            job, deleted = pool.submit(submit), pool.submit(delete)
            job, deleted = job.result(), deleted.result()
        outcome = (job.status_code, deleted.status_code)
        outcomes.append(outcome)
        assert outcome in {(201, 409), (422, 204)}, (outcome, job.text, deleted.text)
        if job.status_code == 201:
            assert client.get(f"/v1/files/{teacher}").status_code == 200
            client.post(f"/v1/jobs/{job.json()['id']}/cancel")
        else:
            problem(job, 422)
    jobs = client.get("/v1/jobs?limit=100").json()["data"]
    assert len(jobs) == sum(1 for o in outcomes if o[0] == 201)


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)  # lock_timeout is PostgreSQL's
def test_a_delete_or_submission_that_waits_past_the_lock_timeout_is_a_503_and_changes_nothing(
        settings, clean_pg, digits_teacher):
    """Both take the tenant's lock now; a wait past KD_DB_LOCK_TIMEOUT_MS is a 503 problem with
    Retry-After and nothing changed (the submission's wait was a 500 before). PostgreSQL only:
    SQLite has no lock_timeout (it waits for its write lock up to busy_timeout)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.utils import API_KEY, tenant_row_locked

    with TestClient(create_app(settings.model_copy(update={"db_lock_timeout_ms": 500})),
                    raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
        with tenant_row_locked(client, clean_pg):
            for resp in (client.delete(f"/v1/files/{teacher}"), client.post("/v1/jobs", json=job_body(teacher))):
                body = problem(resp, 503)
                assert "KD_DB_LOCK_TIMEOUT_MS" in body["detail"] and resp.headers["Retry-After"] == "1"
        assert client.get(f"/v1/files/{teacher}").status_code == 200 and len(stored_objects(settings)) == 1
        assert client.get("/v1/jobs").json()["data"] == []
        assert client.delete(f"/v1/files/{teacher}").status_code == 204  # the lock gone
