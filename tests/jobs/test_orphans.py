"""Stored uploads no files row names (issue 16 item 6): the stores list objects by age and remove
their stale temporaries; `delete_unrecorded_uploads` deletes only old objects without a row, and
never one whose row is committed while it decides (both stores, both databases)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy import text

from jobs import files_repo, quotas_repo, tenants_repo
from jobs.artifact_store import LocalArtifactStore
from jobs.db import make_sessionmaker
from jobs.orphans import delete_unrecorded_uploads
from tests.utils import leftovers

HOUR = 3600.0


def _record(session, tenant_id: str, key: str) -> None:
    files_repo.create(session, tenant_id=tenant_id, file_id=key.rsplit("/", 1)[-1], purpose="dataset",
                      format="csv", filename="d.csv", bytes=3, sha256="0" * 64, storage_key=key)
    session.commit()


def test_list_older_than_goes_by_when_the_object_was_written(store):
    store.write_stream("files/t/file_a", [b"abc"])
    store.write_stream("jobs/job_1/summary.json", [b"{}"])
    assert store.list_older_than("files", time.time() + 60) == ["files/t/file_a"]
    assert store.list_older_than("files", time.time() - 60) == []
    assert store.list_older_than("nothing", time.time() + 60) == []


def test_stale_temporaries_of_interrupted_writes_are_removed(store):
    store.write_stream("files/t/file_a", [b"abc"])
    if isinstance(store, LocalArtifactStore):  # what a write killed midway leaves
        old, fresh = store.root / "files" / "t" / ".tmp-old.part", store.root / "jobs" / ".tmp-new.part"
        for path in (old, fresh):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half")
        os.utime(old, (time.time() - 2 * HOUR, time.time() - 2 * HOUR))
        assert store.remove_stale_temporaries(time.time() - HOUR) == ["files/t/.tmp-old.part"]
        assert leftovers(store) == ["files/t/file_a", "jobs/.tmp-new.part"]
        assert store.remove_stale_temporaries(time.time() + 60) == ["jobs/.tmp-new.part"]
    else:  # an unfinished multipart upload and a temporary object under .uploads/, named as the store names them
        u1, u2 = store._temporary_name(), store._temporary_name()
        upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=u1)
        store.client.upload_part(Bucket=store.bucket, Key=u1, UploadId=upload["UploadId"], PartNumber=1, Body=b"part")
        store.client.put_object(Bucket=store.bucket, Key=u2, Body=b"done, not copied")
        # both are recent (moto reports every upload's Initiated as 2010: the age comes from the name)
        assert store.remove_stale_temporaries(time.time() - HOUR) == []
        assert sorted(store.remove_stale_temporaries(time.time() + 60)) == sorted([f"upload:{u1}", u2])
    assert leftovers(store) == ["files/t/file_a"]


def test_only_old_objects_without_a_row_are_deleted(engine, tenant, store):
    sessions = make_sessionmaker(engine)
    recorded, unrecorded = f"files/{tenant.id}/file_rec", f"files/{tenant.id}/file_lost"
    for key in (recorded, unrecorded, "jobs/job_1/student.safetensors"):
        store.write_stream(key, [b"abc"])
    with sessions() as session:
        _record(session, tenant.id, recorded)
    assert delete_unrecorded_uploads(store, sessions, older_than=HOUR) == []  # younger than the grace
    assert delete_unrecorded_uploads(store, sessions, older_than=HOUR, now=time.time() + 2 * HOUR) == [unrecorded]
    assert leftovers(store) == sorted([recorded, "jobs/job_1/student.safetensors"])


def test_a_row_committed_while_the_sweep_decides_keeps_its_object(pg_engine, store):
    """The upload's commit holds the tenant's row lock; the sweep waits for it, reads the row, and
    keeps the object."""
    sessions = make_sessionmaker(pg_engine)
    with sessions() as session:
        tenant = tenants_repo.get_or_create(session, name="racer")
        session.commit()
    key = f"files/{tenant.id}/file_late"
    store.write_stream(key, [b"abc"])
    result: list = []
    with sessions() as upload:  # the upload's `create` transaction: tenant locked, row not yet inserted
        quotas_repo.lock_tenant(upload, tenant_id=tenant.id)
        sweep = threading.Thread(target=lambda: result.append(
            delete_unrecorded_uploads(store, sessions, older_than=HOUR, now=time.time() + 2 * HOUR)))
        sweep.start()
        deadline = time.monotonic() + 10
        with pg_engine.connect() as conn:  # until the sweep waits on the lock
            while True:
                waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                            "AND datname = current_database()")).scalar()
                conn.rollback()  # pg_stat_activity is a snapshot taken once per transaction
                if waiting:
                    break
                assert time.monotonic() < deadline, "the sweep did not wait for the tenant's lock"
                time.sleep(0.05)
        assert store.exists(key)
        _record(upload, tenant.id, key)  # commits, and frees the lock
    sweep.join(10)
    assert result == [[]] and store.exists(key)
