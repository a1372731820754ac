"""Dependencies every route declares through short `Annotated` aliases."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Callable, Iterator, TypeVar

import anyio
from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from api.problems import Problem
from jobs import api_keys, reads
from jobs.artifact_store import ArtifactStore
from jobs.settings import Settings
from jobs.tables import Tenant

T = TypeVar("T")
bearer = _bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer kd_...`")


def _database_slots(app) -> anyio.Semaphore | None:
    """The app's database slots (`database_slot`), made on first use; None when the pool is unbounded."""
    slots = getattr(app.state, "database_slots", None)
    if slots is None:
        pool = app.state.engine.pool
        # QueuePool: pool_size + max_overflow connections (-1 overflow means unbounded: no slots needed)
        capacity = pool.size() + pool._max_overflow if isinstance(pool, QueuePool) and pool._max_overflow >= 0 \
            else None
        # fast_acquire: a free slot is taken without a trip round the event loop (anyio's default yields
        # once per acquire, a loop iteration per request: B4's profile); a request awaits its thread next
        slots = app.state.database_slots = anyio.Semaphore(capacity, fast_acquire=True) if capacity else False
    return slots or None


@asynccontextmanager
async def database_slot(request: Request) -> AsyncIterator[None]:
    """Wait on the event loop, holding no worker thread, until the pool has a connection for this
    request. Without it a burst deadlocks: sync routes and FastAPI's serialization of their result
    run in the 40 worker threads; once every thread waits for a pooled connection and every
    connection is held by a request waiting for a thread, nothing moves until the pool's 30 s timeout
    (bench/RESULTS.md, B4). With at most pool-size requests holding a session, a checkout never waits."""
    slots = _database_slots(request.app)
    if slots is None:
        yield
        return
    async with slots:
        yield


async def _database_slot(request: Request) -> AsyncIterator[None]:
    async with database_slot(request):
        yield


async def in_session(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """`fn(session, *args)` in a worker thread with a session of its own, under a database slot
    taken for this call only: committed when it returns, rolled back (its locks released) before
    its exception propagates. For routes that must hold no connection between steps (uploads)."""
    def run() -> T:
        with request.app.state.sessionmaker() as session:
            try:
                result = fn(session, *args)
                session.commit()
                return result
            except BaseException:  # a lock wait past KD_DB_LOCK_TIMEOUT_MS is a 503 (api.problems)
                session.rollback()
                raise

    async with database_slot(request):
        return await run_in_threadpool(run)


def get_session(request: Request, _slot: Annotated[None, Depends(_database_slot)]) -> Iterator[Session]:
    """One session per request; routes commit once at the boundary, anything else rolls back. The
    session closes (its connection back to the pool) before the request's database slot is freed."""
    with request.app.state.sessionmaker() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def presented_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The key of `Authorization: Bearer <key>`; 401 when the header is missing or malformed."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "an API key is required: Authorization: Bearer <key>", slug="unauthorized",
                      headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


async def _presented_key(request: Request) -> str:
    return key_from_header(request)


# The presented key, for routes that check it themselves in their one statement (jobs/reads.py). An
# async dependency: it runs on the event loop, and a missing key is a 401 before any parameter check.
# It reads the header itself, as `bearer` would (one dependency to solve instead of two: B4's profile
# of GET /v1/jobs), so a route that declares it declares BEARER_SECURITY for the OpenAPI document.
KeyDep = Annotated[str, Depends(_presented_key)]


def unknown_key() -> Problem:
    """The one answer to an unknown or revoked key, whatever the route."""
    return Problem(401, "the API key is unknown or revoked", slug="unauthorized",
                   headers={"WWW-Authenticate": "Bearer"})


def key_from_header(request: Request) -> str:
    """The key of `Authorization: Bearer <key>`, read as `bearer` reads it, for routes that declare no
    dependency (FastAPI's dependency solving costs more than their statement); 401 when missing."""
    scheme, key = get_authorization_scheme_param(request.headers.get("Authorization"))
    if not scheme or not key or scheme.lower() != "bearer":
        return presented_key(None)
    return key


# What those routes declare in the OpenAPI document instead of the `bearer` dependency.
BEARER_SECURITY = {"security": [{"HTTPBearer": []}]}


async def read(request: Request, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """`fn(engine, **kwargs)`, a read of one statement (jobs/reads.py). On PostgreSQL it is sent from the
    event loop by the app's AsyncReader (its own few connections; no worker thread: B4's profile had the
    thread hop at 13 % of a GET job's API time). Elsewhere (SQLite) under a database slot, in one thread of
    the app's read executor (a plain executor: half the cost of anyio's thread hop). Either way the
    connection is given back before this returns: a read never holds one while its response goes to
    the client."""
    app = request.app
    reader = app.state.async_reader
    if reader is not None:
        return await reader.read(fn, **kwargs)
    call = functools.partial(fn, app.state.engine, **kwargs)
    slots = _database_slots(app)
    if slots is None:
        return await asyncio.get_running_loop().run_in_executor(_read_executor(app), call)
    await slots.acquire()  # `database_slot` without its context manager: this path is every read's
    try:
        return await asyncio.get_running_loop().run_in_executor(_read_executor(app), call)
    finally:
        slots.release()


def _read_executor(app) -> ThreadPoolExecutor:
    """The app's threads for `read` (created on first use; the lifespan shuts them down), as many as
    its pool has connections: with the database slots, no read ever waits for a connection."""
    executor = getattr(app.state, "read_executor", None)
    if executor is None:
        pool = app.state.engine.pool
        threads = pool.size() + max(pool._max_overflow, 0) if isinstance(pool, QueuePool) else 8
        executor = app.state.read_executor = ThreadPoolExecutor(threads, thread_name_prefix="kd-read")
    return executor


def current_tenant(session: SessionDep, credentials: BearerDep) -> Tenant:
    """The tenant that owns the presented key; 401 for a missing, malformed, unknown or revoked key."""
    tenant = api_keys.authenticate(session, plain_key=presented_key(credentials))
    # End the read transaction now (nothing was written; `tenant` stays loaded): its connection goes back
    # to the pool while this request waits for a worker thread for its route (the deadlock that
    # `database_slot` describes, if it were held across that wait).
    session.commit()
    if tenant is None:
        raise unknown_key()
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


async def current_tenant_briefly(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Tenant:
    """`current_tenant` as one statement (jobs/reads.py:tenant_for_key) with a connection and a database
    slot of its own, both given back before the route runs: a route that then waits on its client (an
    upload's body) holds no connection. The tenant returned is detached (its id and name)."""
    found = await read(request, reads.tenant_for_key, key_hash=reads.key_hash(presented_key(credentials)))
    if found is None:
        raise unknown_key()
    return Tenant(id=found[0], name=found[1])


BriefTenantDep = Annotated[Tenant, Depends(current_tenant_briefly)]


# The cursor pagination of the list routes: newest first, `after` = id of the last row of the previous page.
PageLimit = Annotated[int, Query(ge=1, le=100, description="rows per page (1-100)")]
PageAfter = Annotated[str | None, Query(description="id of the last row of the previous page")]
