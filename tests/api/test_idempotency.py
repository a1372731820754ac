"""Idempotency-Key on POST /v1/jobs and POST /v1/files: replay, different request, in flight,
per tenant, expiry, release on failure, and a claim taken over after its request hung."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import numpy as np
import pytest
import redis
from sqlalchemy import func, select, update

from api import file_inspection
from api.routes import jobs as jobs_route
from jobs import idempotency_repo, tenants_repo
from jobs.migrate import upgrade
from jobs.settings import Settings
from jobs.tables import IN_FLIGHT, IdempotencyKey, utcnow
from harness.services import REDIS_SERVER
from tests.factories import digits_job
from tests.utils import record_body_reads, REDIS_TEST_DB, problem, upload

KEY = "order-7f3a"


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request, settings, tmp_path) -> Settings:
    """Every test on both databases the service runs on (SQLite: a fresh migrated file)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kd.sqlite3'}"
        upgrade(url)
        return settings.model_copy(update={"database_url": url})
    return settings


@pytest.fixture
def teacher_id(client, digits_teacher) -> str:
    return upload(client, digits_teacher[0], "teacher").json()["id"]


def post_job(client, body, key=KEY, headers=None):
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key, **(headers or {})})


def job_ids(client, headers=None) -> list[str]:
    return [j["id"] for j in client.get("/v1/jobs", headers=headers).json()["data"]]


def tenant_id(client, name: str = "default") -> str:
    with client.app.state.sessionmaker() as session:
        return tenants_repo.get_by_name(session, name=name).id


def key_rows(client) -> list[IdempotencyKey]:
    with client.app.state.sessionmaker() as session:
        return list(session.scalars(select(IdempotencyKey).order_by(IdempotencyKey.id)))


def hold_key_in_flight(client, key: str = KEY, tenant: str = "default") -> None:
    """What a concurrent request does first: claim the key, committed, and keep it."""
    with client.app.state.sessionmaker() as session:
        assert idempotency_repo.claim(session, tenant_id=tenant_id(client, tenant), key=key, fingerprint=None,
                                      now=utcnow(), hold_seconds=3600) is not None
        session.commit()


def times_enqueued(job_id: str) -> int:
    """Broker messages naming this job. Other test runs may share the Redis database (they add
    messages and flush it), so tests assert only what those cannot fake: no second message."""
    messages = redis.Redis.from_url(f"{REDIS_SERVER}/{REDIS_TEST_DB}").lrange("kd.cpu", 0, -1)
    return sum(json.loads(base64.b64decode(json.loads(m)["body"]))[0] == [job_id] for m in messages)


# --- POST /v1/jobs ---------------------------------------------------------------------------------

def test_same_key_and_body_replays_the_first_response_and_creates_one_job(client, teacher_id):
    first = post_job(client, digits_job(teacher_id))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # The same request, its keys in another order and spaced differently: the same fingerprint.
    body = digits_job(teacher_id)
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = client.post("/v1/jobs", content=reordered,
                        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # byte for byte: the stored response
    assert job_ids(client) == [first.json()["id"]]
    assert times_enqueued(first.json()["id"]) <= 1
    assert [(r.status, r.response_status) for r in key_rows(client)] == [("done", 201)]


def test_same_key_with_a_different_body_is_422_naming_the_header(client, teacher_id):
    first = post_job(client, digits_job(teacher_id)).json()
    err = problem(post_job(client, digits_job(teacher_id, hyperparameters={"epochs": 3})), 422)
    assert err["errors"][0]["field"] == "Idempotency-Key"
    assert "different request" in err["detail"]
    assert job_ids(client) == [first["id"]]


def test_a_key_used_for_a_file_cannot_create_a_job(client, digits_teacher, teacher_id):
    upload(client, digits_teacher[0], "teacher", headers={"Idempotency-Key": "shared"})
    err = problem(post_job(client, digits_job(teacher_id), key="shared"), 422)
    assert err["errors"][0]["field"] == "Idempotency-Key"
    assert job_ids(client) == []


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there", "bell\x07", "caf\xe9"])
def test_a_malformed_key_is_422_naming_the_header(client, teacher_id, key):
    resp = client.post("/v1/jobs", json=digits_job(teacher_id), headers={"Idempotency-Key": key.encode("latin-1")})
    err = problem(resp, 422)
    assert err["errors"][0]["field"] == "Idempotency-Key" and "printable ASCII" in err["detail"]
    assert job_ids(client) == [] and key_rows(client) == []


def test_the_longest_key_and_every_printable_character_are_accepted(client, teacher_id):
    printable = "".join(chr(c) for c in range(0x21, 0x7F))
    for key in ("k" * 255, printable):
        assert post_job(client, digits_job(teacher_id), key=key).status_code == 201
    assert len(job_ids(client)) == 2


def test_a_key_in_flight_is_409_and_creates_nothing(client, teacher_id):
    hold_key_in_flight(client)
    err = problem(post_job(client, digits_job(teacher_id)), 409)
    assert err["errors"][0]["field"] == "Idempotency-Key" and "in progress" in err["detail"]
    assert job_ids(client) == []
    assert [r.status for r in key_rows(client)] == [IN_FLIGHT]  # the holder's claim is untouched


def test_the_claim_is_committed_before_the_work_so_a_concurrent_retry_gets_409(client, teacher_id, monkeypatch):
    seen = {}

    def slow_resolve_spec(session, **kwargs):
        # Runs in a worker thread while the first request is in flight: the claim must already be
        # visible to other connections, and a second request with the key must be refused.
        if "rows" not in seen:  # the first request only (were the second let through, not again)
            seen["rows"] = [(r.key, r.status) for r in key_rows(client)]
            if seen["rows"] == [(KEY, IN_FLIGHT)]:
                seen["concurrent"] = post_job(client, digits_job(teacher_id))
        return original(session, **kwargs)

    original = jobs_route.resolve_spec
    monkeypatch.setattr(jobs_route, "resolve_spec", slow_resolve_spec)
    first = post_job(client, digits_job(teacher_id))
    assert seen["rows"] == [(KEY, IN_FLIGHT)]
    assert first.status_code == 201
    assert problem(seen["concurrent"], 409)["errors"][0]["field"] == "Idempotency-Key"
    assert job_ids(client) == [first.json()["id"]]


def test_keys_are_per_tenant(client, teacher_id, digits_teacher, other_tenant_headers):
    mine = post_job(client, digits_job(teacher_id))
    hold_key_in_flight(client, key="held")
    their_teacher = upload(client, digits_teacher[0], "teacher", headers=other_tenant_headers).json()["id"]
    for key in (KEY, "held"):  # one this tenant finished, one it holds in flight: free for the other
        theirs = post_job(client, digits_job(their_teacher), key=key, headers=other_tenant_headers)
        assert theirs.status_code == 201, theirs.text
        assert "idempotent-replayed" not in theirs.headers
    assert len(job_ids(client, headers=other_tenant_headers)) == 2
    replay = post_job(client, digits_job(teacher_id))
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == mine.content
    problem(post_job(client, digits_job(teacher_id), key="held"), 409)
    assert job_ids(client) == [mine.json()["id"]]


def test_an_expired_key_is_replaced_and_makes_a_new_job(client, teacher_id):
    first = post_job(client, digits_job(teacher_id)).json()
    with client.app.state.sessionmaker() as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    again = post_job(client, digits_job(teacher_id))
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first["id"]
    assert len(job_ids(client)) == 2
    rows = key_rows(client)
    assert len(rows) == 1 and rows[0].response_body["id"] == again.json()["id"]
    assert post_job(client, digits_job(teacher_id)).headers["idempotent-replayed"] == "true"


def test_the_key_is_kept_for_the_configured_ttl(client, teacher_id):
    before = utcnow()
    post_job(client, digits_job(teacher_id))
    (row,) = key_rows(client)
    ttl = timedelta(seconds=client.app.state.settings.idempotency_ttl_seconds)
    assert ttl == timedelta(hours=24)
    assert before + ttl <= row.expires_at <= utcnow() + ttl


def test_expired_keys_of_any_tenant_are_purged_when_a_key_is_claimed(client, teacher_id, other_tenant_headers):
    long_ago = utcnow() - timedelta(days=3)
    with client.app.state.sessionmaker() as session:
        for tenant, key in (("default", "old-1"), ("other", "old-2")):
            idempotency_repo.claim(session, tenant_id=tenant_id(client, tenant), key=key, fingerprint=None,
                                   now=long_ago, hold_seconds=60)
        session.commit()
    assert len(key_rows(client)) == 2
    post_job(client, digits_job(teacher_id))
    assert [r.key for r in key_rows(client)] == [KEY]


def test_a_failed_request_releases_its_key_for_a_fixed_retry(client, teacher_id):
    bad = digits_job(teacher_id)
    bad["hyperparameters"]["alpha"] = 1.5
    err = problem(post_job(client, bad), 422)
    assert err["errors"][0]["field"] == "hyperparameters.alpha"
    assert key_rows(client) == []
    fixed = post_job(client, digits_job(teacher_id))
    assert fixed.status_code == 201 and "idempotent-replayed" not in fixed.headers
    replay = post_job(client, digits_job(teacher_id))
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == fixed.content
    assert job_ids(client) == [fixed.json()["id"]]


def test_a_request_that_outlived_its_claim_creates_nothing(client, teacher_id, monkeypatch):
    """The first request hangs past KD_IDEMPOTENCY_IN_FLIGHT_SECONDS; a retry takes the key over
    and creates the job; the first request, resuming, must not create a second one."""
    seen = {}

    def hanging_resolve_spec(session, **kwargs):
        if not seen:  # the first request only; the retry below runs this too
            seen["retry"] = None
            with client.app.state.sessionmaker() as other:
                other.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
                other.commit()
            seen["retry"] = post_job(client, digits_job(teacher_id))
        return original(session, **kwargs)

    original = jobs_route.resolve_spec
    monkeypatch.setattr(jobs_route, "resolve_spec", hanging_resolve_spec)
    first = post_job(client, digits_job(teacher_id))
    assert seen["retry"].status_code == 201
    assert problem(first, 409)["errors"][0]["field"] == "Idempotency-Key"
    assert job_ids(client) == [seen["retry"].json()["id"]]
    assert [(r.status, r.response_body["id"]) for r in key_rows(client)] == [("done", seen["retry"].json()["id"])]


def test_without_a_key_every_post_creates_a_job(client, teacher_id):
    for _ in range(2):
        assert client.post("/v1/jobs", json=digits_job(teacher_id)).status_code == 201
    assert len(job_ids(client)) == 2 and key_rows(client) == []


# --- POST /v1/files --------------------------------------------------------------------------------

def stored_files(settings) -> list:
    root = settings.artifacts_path
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def file_ids(client) -> list[str]:
    return [f["id"] for f in client.get("/v1/files").json()["data"]]


def test_the_same_upload_twice_with_one_key_is_one_file(client, settings, digits_teacher):
    headers = {"Idempotency-Key": KEY}
    first = upload(client, digits_teacher[0], "teacher", headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = upload(client, digits_teacher[0], "teacher", headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert file_ids(client) == [first.json()["id"]]
    assert len(stored_files(settings)) == 1
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_a_different_upload_with_the_same_key_is_422(client, settings, digits_teacher, tmp_path):
    headers = {"Idempotency-Key": KEY}
    first = upload(client, digits_teacher[0], "teacher", headers=headers).json()
    other = tmp_path / "other.safetensors"
    other.write_bytes(digits_teacher[0].read_bytes())
    renamed = problem(upload(client, other, "teacher", headers=headers), 422)  # same bytes, other name
    assert renamed["errors"][0]["field"] == "Idempotency-Key"
    data = tmp_path / "teacher.safetensors"
    np.savez(data.with_suffix(".npz"), x=np.random.rand(4, 2).astype(np.float32), y=np.array([0, 1, 0, 1]))
    data.write_bytes(data.with_suffix(".npz").read_bytes())  # same name, other content
    assert problem(upload(client, data, "dataset", headers=headers), 422)["errors"][0]["field"] == "Idempotency-Key"
    assert problem(upload(client, digits_teacher[0], "student_init", headers=headers),
                   422)["errors"][0]["field"] == "Idempotency-Key"  # same file, other purpose
    assert file_ids(client) == [first["id"]] and len(stored_files(settings)) == 1
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_an_upload_whose_key_is_in_flight_is_409_before_its_body_is_read(client, settings, digits_teacher,
                                                                          monkeypatch):
    hold_key_in_flight(client)
    reads = record_body_reads(monkeypatch)
    err = problem(upload(client, digits_teacher[0], "teacher", headers={"Idempotency-Key": KEY}), 409)
    assert err["errors"][0]["field"] == "Idempotency-Key"
    assert reads == [] and file_ids(client) == [] and stored_files(settings) == []


def test_an_upload_claims_its_key_while_it_is_inspected(client, digits_teacher, monkeypatch):
    seen = {}
    original = file_inspection.inspect_upload

    def slow_inspect(path, purpose, limits):
        if "rows" not in seen:  # the first request only
            seen["rows"] = [(r.key, r.status) for r in key_rows(client)]
            if seen["rows"] == [(KEY, IN_FLIGHT)]:
                seen["concurrent"] = upload(client, digits_teacher[0], "teacher", headers={"Idempotency-Key": KEY})
        return original(path, purpose, limits)

    monkeypatch.setattr(file_inspection, "inspect_upload", slow_inspect)
    first = upload(client, digits_teacher[0], "teacher", headers={"Idempotency-Key": KEY})
    assert first.status_code == 201
    assert seen["rows"] == [(KEY, IN_FLIGHT)]
    assert problem(seen["concurrent"], 409)["errors"][0]["field"] == "Idempotency-Key"
    assert file_ids(client) == [first.json()["id"]]


def test_a_rejected_upload_releases_its_key(client, settings, digits_teacher, tmp_path):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    headers = {"Idempotency-Key": KEY}
    assert problem(upload(client, bad, "teacher", headers=headers), 422)["errors"][0]["field"] == "file"
    assert key_rows(client) == []
    good = upload(client, digits_teacher[0], "teacher", headers=headers)
    assert good.status_code == 201 and "idempotent-replayed" not in good.headers
    assert file_ids(client) == [good.json()["id"]] and len(stored_files(settings)) == 1


def test_keys_count_once_per_tenant_across_both_routes(client, digits_teacher):
    with client.app.state.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    upload(client, digits_teacher[0], "teacher", headers={"Idempotency-Key": "a"})
    upload(client, digits_teacher[0], "teacher", headers={"Idempotency-Key": "b"})
    assert sorted(r.key for r in key_rows(client)) == ["a", "b"] and len(file_ids(client)) == 2
