"""A job's JSON (JobOut), kept by the row it was made from, for the pages of GET /v1/jobs.

A dashboard asks for the same page every few seconds, and most of its jobs have not changed since
(queued, finished). Parsing each row's spec, progress and result, validating them into JobOut and
serialising it again was most of a page's cost (bench/RESULTS.md, B4). The page's rows come with
those JSON columns as text (jobs/reads.py), and the JSON of a job is kept under the tuple of every
column its representation reads: a row equal to one seen before gives the same JSON, and a row that
differs in anything is a new key. Nothing can go stale; the oldest entries make room past MAX_ENTRIES.
"""

from __future__ import annotations

import json
import operator
import threading
from types import SimpleNamespace
from typing import Any

from api.schemas.jobs import JobOut
from jobs.reads import JOB_FIELDS, JSON_FIELDS

MAX_ENTRIES = 4096  # about 1.5 KB of JSON and the row's own size each: some 12 MB at most per process

_kept: dict[tuple, str] = {}
_job_fields = operator.attrgetter(*JOB_FIELDS)  # the key: the tuple of those columns of a row
_lock = threading.Lock()


def job_json(row: Any) -> str:
    """JobOut.from_row(row).model_dump_json() for a page row (its JSON_FIELDS as text)."""
    key = _job_fields(row)
    text = _kept.get(key)
    if text is None:
        fields = {name: getattr(row, name) for name in JOB_FIELDS}
        for name in JSON_FIELDS:
            if fields[name] is not None:
                fields[name] = json.loads(fields[name])
        text = JobOut.from_row(SimpleNamespace(**fields)).model_dump_json()
        with _lock:
            if len(_kept) >= MAX_ENTRIES:
                _kept.pop(next(iter(_kept)))  # the oldest
            _kept[key] = text
    return text


def page_json(rows: list[Any], has_more: bool) -> str:
    """JobList(data=[JobOut of each row], has_more=...).model_dump_json(), from each job's JSON."""
    return f'{{"object":"list","data":[{",".join(job_json(r) for r in rows)}],"has_more":{"true" if has_more else "false"}}}'
