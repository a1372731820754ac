"""Fixtures for tests of jobs/: real databases, migrated with Alembic.

`engine` (and `session`, built on it) is parametrised over SQLite (a temporary file) and
PostgreSQL (a fresh `kd_test_<random>` database for the test session, dropped at the end). Each
test starts from empty tables: they are emptied after every test. Factories for rows are fixtures
here (`make_tenant`, `make_job`, `make_file`), not copy-pasted setup.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from sqlalchemy import Engine, delete, text
from sqlalchemy.exc import OperationalError

from harness.services import PG_SERVER, fresh_database
from jobs import files_repo, jobs_repo, tenants_repo
from jobs.db import make_engine, make_sessionmaker
from jobs.migrate import upgrade
from jobs.tables import Base

BACKENDS = ("sqlite", "postgresql")


def fresh_pg_database(*, migrate: bool) -> AbstractContextManager[str]:
    """A new PostgreSQL database (harness.services.fresh_database), dropped on exit; skips the test
    where PostgreSQL is not reachable."""
    probe = make_engine(f"{PG_SERVER}/test")
    try:
        probe.connect().close()
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_SERVER}: {exc.orig}")
    finally:
        probe.dispose()
    return fresh_database("kd_test", migrate=migrate)


@pytest.fixture(params=BACKENDS)
def empty_database_url(request, tmp_path) -> Iterator[str]:
    """A new database with no tables at all, on each backend (for migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    else:
        with fresh_pg_database(migrate=False) as url:
            yield url


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    with fresh_pg_database(migrate=True) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'kd.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def engines() -> Iterator[dict[str, Engine]]:
    cache: dict[str, Engine] = {}
    yield cache
    for engine in cache.values():
        engine.dispose()


def _engine_for(request, backend: str) -> Engine:
    cache = request.getfixturevalue("engines")
    if backend not in cache:
        cache[backend] = make_engine(request.getfixturevalue(f"{backend}_url"))
    return cache[backend]


def _empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))


@pytest.fixture(params=BACKENDS)
def engine(request) -> Iterator[Engine]:
    engine = _engine_for(request, request.param)
    yield engine
    _empty_tables(engine)


@pytest.fixture
def pg_engine(request) -> Iterator[Engine]:
    """PostgreSQL only: for tests of concurrent writers (SQLite serialises them anyway)."""
    engine = _engine_for(request, "postgresql")
    yield engine
    _empty_tables(engine)


@pytest.fixture(scope="module")
def sqlite_module_factory(request):
    """A sessionmaker on SQLite whose rows live for the whole module (for hypothesis tests,
    which must not use function-scoped fixtures); the tables are emptied after the module."""
    engine = _engine_for(request, "sqlite")
    yield make_sessionmaker(engine)
    _empty_tables(engine)


@pytest.fixture
def session_factory(engine):
    return make_sessionmaker(engine)


@pytest.fixture
def session(session_factory):
    with session_factory() as session:
        yield session
        session.rollback()


@pytest.fixture
def make_tenant(session):
    def make(name: str | None = None):
        tenant = tenants_repo.get_or_create(session, name=name or f"tenant-{secrets.token_hex(4)}")
        session.commit()
        return tenant
    return make


@pytest.fixture
def tenant(make_tenant):
    return make_tenant("acme")


@pytest.fixture
def make_job(session, tenant):
    def make(*, tenant_id: str | None = None, spec: dict[str, Any] | None = None, max_attempts: int = 3):
        job = jobs_repo.create(session, tenant_id=tenant_id or tenant.id,
                               spec=spec or {"teacher": {"file_id": "file_none"}}, max_attempts=max_attempts)
        session.commit()
        return job
    return make


@pytest.fixture
def make_file(session, tenant):
    def make(*, tenant_id: str | None = None, purpose: str = "teacher", filename: str = "teacher.safetensors"):
        file_id = files_repo.new_file_id()
        row = files_repo.create(session, tenant_id=tenant_id or tenant.id, purpose=purpose, format="safetensors",
                                filename=filename, bytes=3, sha256="0" * 64,
                                storage_key=f"files/{file_id}/{filename}", info={"classes": 10},
                                file_id=file_id)
        session.commit()
        return row
    return make
