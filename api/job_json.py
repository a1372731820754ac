"""A job's JSON (JobOut), kept by the row it was made from, for GET /v1/jobs/{id} and the pages of GET /v1/jobs.

A dashboard asks for the same page every few seconds, and most of its jobs have not changed since
(queued, finished). Parsing each row's spec, progress and result, validating them into JobOut and
serialising it again was most of a page's cost (bench/RESULTS.md, B4). The page's rows come with
those JSON columns as text (jobs/reads.py), and the JSON of a job is kept under the tuple of every
column its representation reads: a row equal to one seen before gives the same JSON, and a row that
differs in anything is a new key. Nothing can go stale; the oldest entries make room past MAX_ENTRIES.
A queued job's waiting reason, which changes while its row does not, is added to its kept JSON each time.
"""

from __future__ import annotations

import functools
import json
import operator
import threading
from types import SimpleNamespace
from typing import Any

from api.schemas.jobs import JobOut
from jobs.reads import JOB_FIELDS, JSON_FIELDS
from jobs.tables import QUEUED
from jobs.workers_repo import waiting_reason

MAX_ENTRIES = 4096  # about 1.5 KB of JSON and the row's own size each: some 12 MB at most per process

_kept: dict[tuple, str] = {}
_job_fields = operator.attrgetter(*JOB_FIELDS)  # the key: the tuple of those columns of a row
_lock = threading.Lock()


def _job_out(row: Any) -> JobOut:
    fields = {name: getattr(row, name) for name in JOB_FIELDS}
    for name in JSON_FIELDS:
        if fields[name] is not None:
            fields[name] = json.loads(fields[name])
    return JobOut.from_row(SimpleNamespace(**fields))


# JobOut's last two fields, null in a kept JSON; a queued job's are filled in when it is answered
_QUEUE_NULL = '"queue_position":null,"waiting_reason":null}'


def job_json(row: Any, live_queues: frozenset[str] = frozenset(), queue_position: int | None = None) -> str:
    """JobOut.from_row(row).model_dump_json() for a row whose JSON_FIELDS are text (jobs/reads.py); a queued
    job's with its `waiting_reason` given `live_queues` and its `queue_position` (GET /v1/jobs/{id} reads it;
    a page does not)."""
    key = _job_fields(row)
    text = _kept.get(key)
    if text is None:
        text = _job_out(row).model_dump_json()
        with _lock:
            if len(_kept) >= MAX_ENTRIES:
                _kept.pop(next(iter(_kept)))  # the oldest
            _kept[key] = text
    if row.status != QUEUED:
        return text
    # a queued job's place and reason change (jobs ahead start, workers come and go) while its row does
    # not: added to the kept JSON
    reason = _waiting_reason(row.spec, live_queues)
    if reason is None and queue_position is None:
        return text
    if not text.endswith(_QUEUE_NULL):  # a field after them: the model says it, at full cost
        out = _job_out(row)
        out.queue_position, out.waiting_reason = queue_position, reason
        return out.model_dump_json()
    return (f'{text[:-len(_QUEUE_NULL)]}"queue_position":{"null" if queue_position is None else int(queue_position)},'
            f'"waiting_reason":{json.dumps(reason, ensure_ascii=False)}}}')


@functools.lru_cache(maxsize=1024)
def _waiting_reason(spec_text: str | None, live_queues: frozenset[str]) -> str | None:
    """workers_repo.waiting_reason of a spec given as JSON text (a page asks again every few seconds)."""
    return waiting_reason(json.loads(spec_text) if spec_text is not None else None, live_queues)


def page_json(rows: list[Any], has_more: bool, live_queues: frozenset[str] = frozenset()) -> str:
    """JobList(data=[JobOut of each row], has_more=...).model_dump_json(), from each job's JSON."""
    data = ",".join(job_json(r, live_queues) for r in rows)
    return f'{{"object":"list","data":[{data}],"has_more":{"true" if has_more else "false"}}}'
