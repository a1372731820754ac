"""The API's PostgreSQL sessions carry lock_timeout and idle_in_transaction_session_timeout
(KD_DB_LOCK_TIMEOUT_MS, KD_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS; issue 16 item 1), and a request whose
lock wait passes the limit is a 503 problem with Retry-After, nothing stored, not a 500."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from jobs.tables import File, Tenant
from tests.utils import API_KEY, problem, tenant_row_locked

CSV = b"a,label\n" + b"".join(b"%d.0,%d\n" % (i % 7, i % 2) for i in range(200))


@pytest.fixture
def locking_client(settings):
    settings = settings.model_copy(update={"db_lock_timeout_ms": 500, "db_idle_in_transaction_timeout_ms": 3000})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {API_KEY}"
        yield c


def test_service_sessions_have_the_timeouts(locking_client):
    with locking_client.app.state.sessionmaker() as session:
        assert session.scalar(text("SHOW lock_timeout")) == "500ms"
        assert session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "3s"


def test_defaults_are_set_on_the_service_sessions(client):
    with client.app.state.sessionmaker() as session:
        assert session.scalar(text("SHOW lock_timeout")) == "10s"
        assert session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "1min"


def test_an_upload_that_waits_past_lock_timeout_is_a_503_and_stores_nothing(locking_client, clean_pg):
    with tenant_row_locked(locking_client, clean_pg):
        started = time.monotonic()
        resp = locking_client.post("/v1/files", data={"purpose": "dataset"}, files={"file": ("d.csv", CSV)})
        assert time.monotonic() - started < 20  # the lock wait was bounded (the lock is still held)
        body = problem(resp, 503)
        assert "KD_DB_LOCK_TIMEOUT_MS" in body["detail"] and resp.headers["Retry-After"] == "1"
    with locking_client.app.state.sessionmaker() as session:
        assert session.scalar(select(File.id)) is None
    assert not list((locking_client.app.state.settings.data_dir / "tmp").glob("upload-*"))
    # the lock gone, the same upload goes through
    assert locking_client.post("/v1/files", data={"purpose": "dataset"},
                               files={"file": ("d.csv", CSV)}).status_code == 201


def test_a_transaction_left_idle_is_ended_by_the_server(locking_client):
    """A session forgotten in an open transaction (a bug) loses it after the idle timeout: its locks
    go with it."""
    sessions = locking_client.app.state.sessionmaker
    forgotten = sessions()
    tenant_id = forgotten.scalar(select(Tenant.id))
    forgotten.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    with sessions() as other:
        deadline = time.monotonic() + 30
        while True:  # once the server ends it, the row can be locked again without waiting
            try:
                other.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
                break
            except DBAPIError:
                other.rollback()
                assert time.monotonic() < deadline, "the idle transaction kept its lock"
                time.sleep(0.5)
        other.rollback()
    with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
        forgotten.execute(text("SELECT 1"))
    try:
        forgotten.close()
    except DBAPIError:
        pass
