"""The API's hot reads, one statement each: the presented key's tenant and the rows it asks for.

`GET /v1/jobs/{id}` and `GET /v1/jobs` used to cost a session, an authentication query and its
commit, then the job query, and for a queued job two more (its queue position, the live workers),
each a round trip, plus the BEGIN and ROLLBACK around them (bench/RESULTS.md, B4). Here the key
lookup is the statement's outer row, `api_keys` LEFT JOIN the tenant's jobs, so one round trip
answers all of it:

- no row: the key is unknown or revoked (401). Revocation takes effect at the next request: nothing
  is cached;
- a row whose job columns are NULL: the tenant has no such job (404), or no job on this page;
- otherwise the job, and while it is queued its position and the queues live workers serve,
  computed by scalar subqueries in the same statement.

Each statement is written once, in SQLAlchemy Core, and compiled once per dialect. On PostgreSQL it
runs on the pooled psycopg connection itself, in autocommit mode (no BEGIN and ROLLBACK round trips),
with its rows read by position: SQLAlchemy's execution and result machinery cost about 120 µs of CPU
per statement here, three times the statement's own client cost (B4's profile). Elsewhere (SQLite,
the embedded mode) SQLAlchemy runs it.

Each read is written once, as a generator that yields its one statement and its parameters and is sent
the rows back (psycopg drives its own protocol the same way: one generator, a blocking and an asyncio
driver). `one_statement` makes the read's name the blocking driver (an engine's pooled connection, in the
caller's thread); `AsyncReader` is the asyncio driver, for the API on PostgreSQL: the statement goes out
from the event loop on a psycopg AsyncConnection of its own small pool, with no worker thread. The
thread hop cost a bare app's select 0.63-0.75 ms of API CPU per request against 0.43-0.55 ms from the
event loop (bench/RESULTS.md, B4's floor).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import namedtuple
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Generator

from sqlalchemy import (JSON, Engine, Text, and_, bindparam, case, cast, func, or_, select, true, tuple_,
                        type_coerce)
from sqlalchemy.dialects.postgresql import JSONB

from jobs.api_keys import KEY_PREFIX, hash_key
from jobs.db import unpinged
from jobs.tables import (JOB_STATUSES, QUEUED, ApiKey, Job, JobEvent, Tenant, UTCDateTime, Worker, could_be_id,
                         utcnow)

_keys = ApiKey.__table__
_jobs = Job.__table__
_older = _jobs.alias("older")
_cursor = _jobs.alias("after_job")
# what a job's representation reads (api/schemas/jobs.py: JobOut.from_row)
JOB_FIELDS = ("id", "status", "spec", "attempt", "max_attempts", "progress", "result", "error_code", "error_message",
              "created_at", "started_at", "finished_at", "updated_at")
JSON_FIELDS = ("spec", "progress", "result")
# a page's rows carry their JSON columns as text: the API keeps each job's JSON by its row, and a row
# it has seen is answered without parsing them (api/job_json.py)
_PAGE_COLUMNS = [cast(_jobs.c[name], Text).label(name) if name in JSON_FIELDS else _jobs.c[name]
                 for name in JOB_FIELDS]


@dataclass(frozen=True)
class KeyedJob:
    tenant_id: str | None  # None: the key is unknown or revoked
    # None: this tenant has no such job; else a row with the job's columns as attributes, its JSON_FIELDS
    # as JSON text (as a page's rows: the API answers from the JSON it keeps by row, api/job_json.py)
    job: Any | None
    queue_position: int | None = None  # while queued: older queued jobs on its queue
    live_queues: frozenset[str] | None = None  # while queued: the queues live workers serve


@dataclass(frozen=True)
class KeyedPage:
    tenant_id: str | None  # None: the key is unknown or revoked
    jobs: list[Any]
    has_more: bool
    cursor_found: bool  # False when `after` names no job of this tenant
    live_queues: frozenset[str] = frozenset()  # the queues live workers serve (for a queued job's waiting_reason)


def key_hash(plain_key: str) -> str | None:
    """The stored hash of a presented key, or None when it cannot be one of ours."""
    return hash_key(plain_key) if plain_key.startswith(KEY_PREFIX) else None


class _Statement:
    """A Core statement, compiled once for PostgreSQL's psycopg driver: its SQL, the values of its
    literal parameters, and a row type naming its columns."""

    def __init__(self, stmt):
        from sqlalchemy.dialects.postgresql.psycopg import dialect

        self.stmt = stmt
        compiled = stmt.compile(dialect=dialect())
        self.sql = str(compiled)
        names = [c.key for c in stmt.selected_columns]
        self.row = namedtuple("Row", names)
        self.utc = [i for i, c in enumerate(stmt.selected_columns) if isinstance(c.type, UTCDateTime)]
        # bound parameters with values (path keys, literals); the named ones are given per call
        self.defaults = {k: v for k, v in compiled.construct_params(_check=False).items() if v is not None}

    def _execute(self, conn, params: dict[str, Any]) -> list:
        conn.autocommit = True
        try:
            return conn.execute(self.sql, {**self.defaults, **params}).fetchall()
        finally:
            if not conn.closed:
                conn.autocommit = False

    def rows(self, engine: Engine, params: dict[str, Any]) -> list:
        if engine.dialect.name != "postgresql":
            with engine.connect() as conn:
                return conn.execute(self.stmt, params).all()
        # No ping before the statement (a round trip of its own): a read is safe to send again, so a
        # connection found dropped (a database restart) is replaced and the statement sent once more,
        # this time on a pinged checkout, which also replaces the pool's other stale connections.
        for attempt in (1, 2):
            with unpinged() if attempt == 1 else nullcontext():
                pooled = engine.raw_connection()
            try:
                raw = self._execute(pooled.driver_connection, params)
                break
            except engine.dialect.loaded_dbapi.OperationalError as err:
                conn = pooled.driver_connection
                dropped = conn.closed or engine.dialect.is_disconnect(err, conn, None)
                if dropped:
                    pooled.invalidate()
                if not dropped or attempt == 2:
                    raise
            except Exception:
                if pooled.driver_connection.closed:
                    pooled.invalidate()
                raise
            finally:
                pooled.close()
        return self.named(raw)

    def named(self, raw: list[tuple]) -> list:
        """psycopg's rows as this statement's row type."""
        rows = []
        for values in raw:
            if self.utc:  # as UTCDateTime returns them, whatever the session's TimeZone
                values = list(values)
                for i in self.utc:
                    if values[i] is not None:
                        values[i] = values[i].astimezone(timezone.utc)
            rows.append(self.row(*values))
        return rows


Steps = Generator[tuple[_Statement, dict[str, Any]], list, Any]


def one_statement(steps: Callable[..., Steps]):
    """`steps(dialect, **kwargs)`, a read that yields (statement, params) once and is sent its rows, as a
    function of (engine, **kwargs) that sends the statement through the engine; `.steps` is the read
    itself, for `AsyncReader`."""
    @functools.wraps(steps)
    def read(engine: Engine, /, **kwargs: Any):
        gen = steps(engine.dialect.name, **kwargs)
        try:
            statement, params = next(gen)
            gen.send(statement.rows(engine, params))
        except StopIteration as done:
            return done.value
        raise RuntimeError(f"{steps.__name__} asked for a second statement")

    read.steps = steps
    return read


class AsyncReader:
    """The reads of this module sent from the event loop (PostgreSQL only): `await reader.read(job_for_key,
    key_hash=..., ...)` answers what `job_for_key(engine, key_hash=..., ...)` does. Up to `size` psycopg
    AsyncConnections in autocommit mode, opened as reads need them and kept; a read waits on the loop
    for a free one (holding nothing else). As the blocking driver: no ping before the statement, and a
    connection found dropped (a database restart) is closed with every idle one (they are as old) and
    the statement sent once more on a new connection. A read cancelled in the middle of its statement
    (its client went away) closes its connection: its protocol state is unknown.

    The API keeps one per process (api/app.py, api/deps.py:read). It serves one event loop at a time (an
    asyncio.Semaphore belongs to the loop it first waited on): a read from another loop closes the idle
    connections and starts a new semaphore there."""

    def __init__(self, url: str, size: int):
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise ValueError("AsyncReader reads PostgreSQL only")
        self.conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free = asyncio.Semaphore(size)
        self._idle: list = []

    async def read(self, fn: Callable[..., Any], /, **kwargs: Any):
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (a test client's): start afresh on it
            self.close()
            self._loop, self._free = loop, asyncio.Semaphore(self.size)
        gen = fn.steps("postgresql", **kwargs)
        try:
            statement, params = next(gen)
            gen.send(await self.rows(statement, params))
        except StopIteration as done:
            return done.value
        raise RuntimeError(f"{fn.__name__} asked for a second statement")

    async def rows(self, statement: _Statement, params: dict[str, Any]) -> list:
        import psycopg

        async with self._free:
            for attempt in (1, 2):
                conn = self._idle.pop() if self._idle else await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True)
                try:
                    cursor = await conn.execute(statement.sql, {**statement.defaults, **params})
                    raw = await cursor.fetchall()
                except psycopg.Error as err:
                    dropped = conn.closed or conn.broken
                    if dropped:
                        self._close(conn)
                        while self._idle:  # as old as the one found dropped
                            self._close(self._idle.pop())
                    else:  # the statement failed (a timeout, say); in autocommit the connection is fine
                        self._idle.append(conn)
                    if not (dropped and isinstance(err, psycopg.OperationalError)) or attempt == 2:
                        raise
                except BaseException:  # cancelled mid-statement
                    self._close(conn)
                    raise
                else:
                    self._idle.append(conn)
                    return statement.named(raw)
        raise AssertionError("unreachable: the second attempt returns or raises")

    @staticmethod
    def _close(conn) -> None:
        conn.pgconn.finish()  # at once, without a trip round the loop; the object is dropped

    def close(self) -> None:
        """Close the idle connections (the API's shutdown); reads in flight close theirs when cancelled."""
        while self._idle:
            self._close(self._idle.pop())


_statements: dict[tuple, _Statement] = {}


def _device(table):
    return func.coalesce(table.c.spec["resources"]["device"].as_string(), "cpu")


def _gpus(table):
    return func.coalesce(table.c.spec["resources"]["gpus"].as_integer(), 1)


def _live_queues(dialect: str):
    """Every live worker's `queues` list, aggregated into one JSON array (of arrays)."""
    live = Worker.last_seen >= bindparam("cutoff", type_=UTCDateTime())
    if dialect == "postgresql":
        agg = type_coerce(func.jsonb_agg(Worker.queues), JSONB(none_as_null=True))
    else:
        agg = type_coerce(func.json_group_array(func.json(Worker.queues)), JSON(none_as_null=True))
    return select(agg).where(live).scalar_subquery()


def _queue_position(job):
    """How many older queued jobs wait on `job`'s queue: the routing rule of jobs/routing.py (as
    workers_repo.queue_position writes it), between two rows."""
    same_queue = and_(_device(_older) == _device(job), or_(_device(job) != "cuda", _gpus(_older) == _gpus(job)))
    return (select(func.count()).select_from(_older)
            .where(_older.c.status == QUEUED, same_queue,
                   tuple_(_older.c.created_at, _older.c.id) < tuple_(job.c.created_at, job.c.id))
            .correlate(job).scalar_subquery())


def _job_statement(dialect: str) -> _Statement:
    key = ("job", dialect)
    if key not in _statements:
        queued = _jobs.c.status == QUEUED
        _statements[key] = _Statement(
            select(_keys.c.tenant_id.label("key_tenant_id"), *_PAGE_COLUMNS,
                   case((queued, _queue_position(_jobs))).label("queue_position"),
                   case((queued, _live_queues(dialect))).label("live_queues"))
            .select_from(_keys.outerjoin(_jobs, and_(_jobs.c.tenant_id == _keys.c.tenant_id,
                                                     _jobs.c.id == bindparam("job_id"))))
            .where(_keys.c.key_hash == bindparam("key_hash"), _keys.c.revoked_at.is_(None)))
    return _statements[key]


@one_statement
def job_for_key(dialect: str, *, key_hash: str | None, job_id: str, stale_seconds: float,
                now: datetime | None = None) -> Steps:
    """The key's tenant and its job `job_id` (a KeyedJob), in one statement (see the module's docstring)."""
    if key_hash is None:
        return KeyedJob(None, None)
    now = now or utcnow()
    rows = yield _job_statement(dialect), {
        # an id we never issue (a NUL byte, 10 kB of text) is not sent: it names no row
        "job_id": job_id if could_be_id(job_id) else "", "key_hash": key_hash,
        "cutoff": now - timedelta(seconds=stale_seconds)}
    if not rows:
        return KeyedJob(None, None)
    row = rows[0]
    if row.id is None:
        return KeyedJob(row.key_tenant_id, None)
    live = _queue_set(row.live_queues) if row.status == QUEUED else None
    return KeyedJob(row.key_tenant_id, row, row.queue_position, live)


def _list_statement(dialect: str, *, status: bool, after: bool) -> _Statement:
    key = ("list", dialect, status, after)
    if key not in _statements:
        valid_key = and_(_keys.c.key_hash == bindparam("key_hash"), _keys.c.revoked_at.is_(None))
        # the page is a subquery of its own, ordered and limited on the tenant's jobs alone, so PostgreSQL reads
        # it from ix_jobs_tenant_created, newest first, and stops at `limit`; as an outer join of api_keys to
        # all of the tenant's jobs, it read and sorted every one of them for each page (4.9 ms at 6000 jobs)
        tenant = select(_keys.c.tenant_id).where(valid_key).scalar_subquery()
        where = [_jobs.c.tenant_id == tenant]
        if status:
            where.append(_jobs.c.status == bindparam("status"))
        columns = [_keys.c.tenant_id.label("key_tenant_id")]
        if after:
            def cursor(column):
                return select(column).where(_cursor.c.id == bindparam("after"),
                                            _cursor.c.tenant_id == tenant).scalar_subquery()
            cursor_id = cursor(_cursor.c.id)
            where.append(tuple_(_jobs.c.created_at, _jobs.c.id) < tuple_(cursor(_cursor.c.created_at), cursor_id))
            columns.append(cursor_id.label("cursor_id"))
        page = (select(*_PAGE_COLUMNS).where(*where)
                .order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc()).limit(bindparam("limit")).subquery("page"))
        # the live workers' queues once, with the key: a queued job's waiting_reason. Not its position: a
        # count per queued row doubled the database's share of a page of queued jobs (bench/RESULTS.md, B4)
        columns.append(_live_queues(dialect).label("live_queues"))
        key_row = select(*columns).where(valid_key).subquery("key_row")
        _statements[key] = _Statement(
            select(*key_row.c, *page.c)
            .select_from(key_row.outerjoin(page, true()))
            .order_by(page.c.created_at.desc(), page.c.id.desc()))
    return _statements[key]


@one_statement
def jobs_for_key(dialect: str, *, key_hash: str | None, limit: int, stale_seconds: float, after: str | None = None,
                 status: str | None = None, now: datetime | None = None) -> Steps:
    """The key's tenant and a page (a KeyedPage) of its jobs, newest first, after the job `after` (the cursor
    pagination of jobs/pagination.py), and the queues live workers serve, in one statement. The rows'
    JSON_FIELDS are JSON text."""
    if key_hash is None:
        return KeyedPage(None, [], False, True)
    if status is not None and status not in JOB_STATUSES:
        raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}")
    now = now or utcnow()
    params: dict[str, Any] = {"key_hash": key_hash, "limit": limit + 1,
                              "cutoff": now - timedelta(seconds=stale_seconds)}
    if status is not None:
        params["status"] = status
    if after is not None:
        params["after"] = after if could_be_id(after) else ""
    rows = yield _list_statement(dialect, status=status is not None, after=after is not None), params
    if not rows:
        return KeyedPage(None, [], False, True)
    tenant_id = rows[0].key_tenant_id
    if after is not None and rows[0].cursor_id is None:
        return KeyedPage(tenant_id, [], False, False)
    jobs = [r for r in rows if r.id is not None]
    return KeyedPage(tenant_id, jobs[:limit], len(jobs) > limit, True, _queue_set(rows[0].live_queues))


def _queue_set(lists) -> frozenset[str]:
    """The live workers' queues, from the aggregated JSON array of their `queues` lists."""
    if isinstance(lists, str):
        lists = json.loads(lists)
    return frozenset(q for queues in (lists or []) for q in (queues or []))


@dataclass(frozen=True)
class StreamPoll:
    found: bool  # False: the job is gone (deleted), or the key (when checked) is no longer valid
    status: str | None
    events: list[Any]  # rows with the job_events columns as attributes, in seq order


def _stream_statement(dialect: str, *, check_key: bool) -> _Statement:
    key = ("stream", dialect, check_key)
    if key not in _statements:
        events = JobEvent.__table__
        columns = [_jobs.c.status.label("job_status"), *events.c]
        if check_key:
            columns.append(select(_keys.c.id).where(_keys.c.key_hash == bindparam("key_hash"),
                                                    _keys.c.revoked_at.is_(None),
                                                    _keys.c.tenant_id == _jobs.c.tenant_id)
                           .correlate(_jobs).exists().label("key_valid"))
        _statements[key] = _Statement(
            select(*columns)
            .select_from(_jobs.outerjoin(events, and_(events.c.job_id == _jobs.c.id,
                                                      events.c.seq > bindparam("after_seq"))))
            .where(_jobs.c.id == bindparam("job_id"), _jobs.c.tenant_id == bindparam("tenant_id"))
            .order_by(events.c.seq)
            .limit(bindparam("limit")))
    return _statements[key]


@one_statement
def stream_poll(dialect: str, *, tenant_id: str, job_id: str, after_seq: int, limit: int,
                key_hash: str | None = None, check_key: bool = False) -> Steps:
    """One poll (a StreamPoll) of a live event stream (api/sse.py), in one statement: the job's status and its events
    after `after_seq` (one snapshot: a terminal status implies its events are visible), and with
    `check_key` whether the stream's key is still a valid key of the job's tenant."""
    params: dict[str, Any] = {"job_id": job_id, "tenant_id": tenant_id, "after_seq": after_seq, "limit": limit}
    if check_key:
        params["key_hash"] = key_hash or ""
    rows = yield _stream_statement(dialect, check_key=check_key), params
    if not rows or (check_key and not rows[0].key_valid):
        return StreamPoll(False, None, [])
    return StreamPoll(True, rows[0].job_status, [r for r in rows if r.seq is not None])


def _tenant_statement(dialect: str) -> _Statement:
    key = ("tenant", dialect)
    if key not in _statements:
        tenants = Tenant.__table__
        _statements[key] = _Statement(
            select(tenants.c.id, tenants.c.name).select_from(tenants.join(_keys, _keys.c.tenant_id == tenants.c.id))
            .where(_keys.c.key_hash == bindparam("key_hash"), _keys.c.revoked_at.is_(None)))
    return _statements[key]


@one_statement
def tenant_for_key(dialect: str, *, key_hash: str | None) -> Steps:
    """(id, name) or None: of the tenant whose valid key has this hash, or None: api_keys.authenticate in one
    statement, for routes that authenticate before they do anything else (uploads, submissions)."""
    if key_hash is None:
        return None
    rows = yield _tenant_statement(dialect), {"key_hash": key_hash}
    return (rows[0].id, rows[0].name) if rows else None
