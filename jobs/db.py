"""Engines and sessions for the two databases the service runs on.

SQLite (embedded mode): WAL so readers never block the writer, foreign keys on, and a busy timeout
so concurrent writers (API, worker, reaper) wait for the write lock instead of failing. The driver's
default transaction handling is kept on purpose: it begins a transaction at the first write, so a
read never holds a snapshot that must later be upgraded to a write lock (the upgrade deadlock).

PostgreSQL (production): psycopg 3. Every checkout from the pool pings the connection first (SQLAlchemy's
`pool_pre_ping`, done by a `checkout` listener here), so a connection dropped by a database restart is
replaced, and the pool's older connections with it, instead of failing the next request. Single-statement
reads (jobs/reads.py) skip the ping inside `unpinged()` and retry once on a disconnect instead: the ping is
a round trip of its own, a third of what a GET of a job costs the API and the database (bench/RESULTS.md,
B4). READ COMMITTED (the default) is what the state machine's conditional updates are written for.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when a statement's lock wait passed lock_timeout


def is_lock_timeout(exc: BaseException) -> bool:
    """An OperationalError from a lock wait past `lock_timeout` (KD_DB_LOCK_TIMEOUT_MS): the
    transaction was rolled back, so nothing changed and a retry is safe."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == LOCK_NOT_AVAILABLE


def make_engine(url: str, *, lock_timeout_ms: int | None = None, idle_in_transaction_timeout_ms: int | None = None,
                **kwargs) -> Engine:
    """An engine for `url`; extra keyword arguments go to `create_engine`. On PostgreSQL,
    `lock_timeout_ms` and `idle_in_transaction_timeout_ms` (0 = off) are set on every session, so a
    lock wait or a forgotten transaction is bounded by the server whatever the code does."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # no driver named: use psycopg 3, the one installed
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    options = []
    if lock_timeout_ms is not None:
        options.append(f"-c lock_timeout={int(lock_timeout_ms)}")
    if idle_in_transaction_timeout_ms is not None:
        options.append(f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_ms)}")
    if options:
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args["options"] = " ".join([connect_args.get("options", ""), *options]).strip()
        kwargs["connect_args"] = connect_args
    engine = create_engine(parsed, **kwargs)
    _ping_on_checkout(engine)
    return engine


_UNPINGED: ContextVar[bool] = ContextVar("kd_unpinged_checkout", default=False)


@contextmanager
def unpinged() -> Iterator[None]:
    """Checkouts in this block skip the ping: for a read that retries itself once on a disconnect."""
    token = _UNPINGED.set(True)
    try:
        yield
    finally:
        _UNPINGED.reset(token)


def _ping_on_checkout(engine: Engine) -> None:
    """`pool_pre_ping`, as SQLAlchemy does it (a new connection is not pinged; a failed ping invalidates
    the pool's connections made before it and the checkout gets a new one), unless `unpinged()`."""
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection, record) -> None:
        record.info["kd_fresh"] = True

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, record, _proxy) -> None:
        if record.info.pop("kd_fresh", False) or _UNPINGED.get():
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise exc.InvalidatePoolError() from err
            raise


def _sqlite_engine(url, **kwargs) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    connect_args.update(kwargs.pop("connect_args", {}))
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cursor.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows readable after the boundary's single commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)
