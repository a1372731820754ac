"""Server-sent events: a job's events as they happen (GET /v1/jobs/{id}/events with
`Accept: text/event-stream`).

Each event is written as

    id: <seq>
    event: <type>
    data: <the EventOut JSON, one line>
    <blank line>

so a client that reconnects sends `Last-Event-ID` and resumes after it. The stream polls the
database every POLL_SECONDS through the caller's `run` (api/deps.py:read: a connection for that poll
only, between polls the stream holds none), sends a
`: keep-alive` comment every KEEPALIVE_SECONDS of silence, and ends once the job is in a terminal
status and every event up to then has been sent, or, at the first poll KEY_CHECK_SECONDS after the
last check that finds the stream's API key revoked, at once.

A poll is one statement (jobs/reads.py:stream_poll: status, events and, every KEY_CHECK_SECONDS, the
key) in autocommit mode, sent from the event loop on PostgreSQL (api/deps.py:read). It was a session
per poll with two or three statements and their BEGIN and ROLLBACK: 200 idle streams took 0.86 of a
core and GET job throughput fell to 20 % (bench/RESULTS.md, B8).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse

from api.problems import Problem
from api.schemas.jobs import EventOut
from jobs import jobs_repo, reads
from jobs.tables import TERMINAL_STATUSES

MEDIA_TYPE = "text/event-stream"
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
KEY_CHECK_SECONDS = 2.0  # a revoked key's streams end within this plus one poll (README: within 5 s)
BATCH = jobs_repo.MAX_EVENTS_PER_READ
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


class StreamSlots:
    """Open streams per tenant in this API process, at most `limit` each (KD_MAX_STREAMS_PER_TENANT).
    `reserve` (in the route, before the response is built) takes a place or answers a 429 problem
    naming the limit; the check and the count happen with no await between them, so requests that
    arrive together cannot pass the limit. The place is given back when the response ends, whatever
    ends it (`CountedStreamingResponse`), or by the route if it fails before answering."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: Counter[str] = Counter()

    def reserve(self, tenant_id: str) -> Callable[[], None]:
        """Take a place for one stream of `tenant_id`; returns its release (idempotent)."""
        if self.open[tenant_id] >= self.limit:
            raise Problem(429, f"this tenant already has {self.open[tenant_id]} open event streams; the limit "
                               f"per API process is {self.limit} (KD_MAX_STREAMS_PER_TENANT): close one, or "
                               "poll the JSON events page", slug="too-many-streams", headers={"Retry-After": "5"})
        self.open[tenant_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[tenant_id] -= 1
                if self.open[tenant_id] <= 0:
                    del self.open[tenant_id]

        return release


class CountedStreamingResponse(StreamingResponse):
    """A StreamingResponse that calls `release` once it has ended: streamed to the end, its client
    gone, or failed. (A generator's own `finally` would not run if the client left before its first
    byte: Starlette never starts it then.)"""

    def __init__(self, content: AsyncIterator[str], *, release: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


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


Run = Callable[..., Awaitable]  # run(read, **kwargs): a jobs/reads.py read, as api/deps.py:read sends it


async def _poll(run: Run, *, tenant_id: str, job_id: str, after_seq: int,
                key_hash: str | None) -> tuple[list[EventOut], bool]:
    """(events after after_seq, whether the stream may end after them), in one statement
    (jobs/reads.py:stream_poll): the status and the events are one snapshot, so a terminal status
    implies its events are visible. With `key_hash`, a key that is no longer valid ends the stream."""
    poll = await run(reads.stream_poll, tenant_id=tenant_id, job_id=job_id, after_seq=after_seq, limit=BATCH,
                     key_hash=key_hash, check_key=key_hash is not None)
    if not poll.found:  # deleted while streaming, or the key was revoked: nothing more will come
        return [], True
    events = [EventOut.from_row(r) for r in poll.events]
    return events, poll.status in TERMINAL_STATUSES and len(events) < BATCH


async def event_stream(run: Run, *, tenant_id: str, job_id: str, after_seq: int, plain_key: str,
                       poll_seconds: float = POLL_SECONDS, keepalive_seconds: float = KEEPALIVE_SECONDS,
                       key_check_seconds: float = KEY_CHECK_SECONDS) -> AsyncIterator[str]:
    """The SSE body. The caller has already checked that the job exists and is the tenant's."""
    key_hash = reads.key_hash(plain_key) or ""  # "" names no key: the first check ends the stream
    last_sent = last_key_check = time.monotonic()
    yield f"retry: {int(poll_seconds * 2000)}\n\n"  # reconnect delay for EventSource clients
    while True:
        check_key = time.monotonic() - last_key_check >= key_check_seconds
        if check_key:
            last_key_check = time.monotonic()
        events, done = await _poll(run, tenant_id=tenant_id, job_id=job_id, after_seq=after_seq,
                                   key_hash=key_hash if check_key else None)
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
