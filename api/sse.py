"""Server-sent events: a job's events as they happen (GET /v1/jobs/{id}/events with
`Accept: text/event-stream`).

Each event is written as

    id: <seq>
    event: <type>
    data: <the EventOut JSON, one line>
    <blank line>

so a client that reconnects sends `Last-Event-ID` and resumes after it. The stream polls the
database every POLL_SECONDS with a fresh session each time (no transaction stays open between
polls), sends a `: keep-alive` comment every KEEPALIVE_SECONDS of silence, and ends once the job is
in a terminal status and every event up to then has been sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.schemas.jobs import EventOut
from jobs import jobs_repo
from jobs.errors import NotFound
from jobs.tables import TERMINAL_STATUSES

MEDIA_TYPE = "text/event-stream"
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
BATCH = jobs_repo.MAX_EVENTS_PER_READ
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def wants_stream(accept: str | None) -> bool:
    """True when the Accept header asks for text/event-stream (any q > 0)."""
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        if media.lower() == MEDIA_TYPE:
            q = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False


def format_event(event: EventOut) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def _poll(sessionmaker: Callable[[], Session], tenant_id: str, job_id: str,
          after_seq: int) -> tuple[list[EventOut], bool]:
    """(events after after_seq, whether the stream may end after them), in a short session.
    The status is read before the events, so a terminal status implies its events are visible."""
    with sessionmaker() as session:
        try:
            status = jobs_repo.get(session, tenant_id=tenant_id, job_id=job_id).status
            rows = jobs_repo.events(session, tenant_id=tenant_id, job_id=job_id, after_seq=after_seq,
                                    limit=BATCH)
        except NotFound:  # deleted while streaming: nothing more will come
            return [], True
        finally:
            session.rollback()
        events = [EventOut.from_row(r) for r in rows]
    return events, status in TERMINAL_STATUSES and len(rows) < BATCH


async def event_stream(sessionmaker: Callable[[], Session], *, tenant_id: str, job_id: str, after_seq: int,
                       poll_seconds: float = POLL_SECONDS,
                       keepalive_seconds: float = KEEPALIVE_SECONDS) -> AsyncIterator[str]:
    """The SSE body. The caller has already checked that the job exists and is the tenant's."""
    last_sent = time.monotonic()
    yield f"retry: {int(poll_seconds * 2000)}\n\n"  # reconnect delay for EventSource clients
    while True:
        events, done = await run_in_threadpool(_poll, sessionmaker, tenant_id, job_id, after_seq)
        for event in events:
            yield format_event(event)
            after_seq = event.id
        if events:
            last_sent = time.monotonic()
        if done:
            return
        if time.monotonic() - last_sent >= keepalive_seconds:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if len(events) < BATCH:  # a full batch means more are waiting: read on at once
            await asyncio.sleep(poll_seconds)
