"""Downloads of stored objects, streamed from the artifact store (a directory or S3), with Range.

The response never needs a file on the API's disk: the bytes come from `store.iter_range`, so an
API in front of an S3 store serves a 1 GiB student without holding or caching it. Headers:
`ETag` (the sha256 the database recorded), `Accept-Ranges: bytes`, `Content-Disposition`.

Range (RFC 9110 §14): one range `bytes=a-b`, `bytes=a-` or `bytes=-n` is answered 206 with
`Content-Range`; a range that starts past the end is 416 (problem+json, `Content-Range: bytes */size`);
a header that does not parse, or asks for several ranges, is ignored and the whole object sent
(200), as the RFC allows. `If-Range` with an ETag other than the object's sends the whole object.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.problems import Problem
from jobs.artifact_store import ArtifactStore

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def stored_download(request: Request, store: ArtifactStore, *, key: str, size: int, sha256: str,
                    filename: str) -> StreamingResponse:
    """The object `key` (`size` bytes, recorded `sha256`) as a download, honouring Range."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Disposition": _disposition(filename)}
    wanted = _wanted_range(request, etag=etag, size=size)
    if wanted is None:
        start, end, status = 0, size - 1, 200
    else:
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    body = store.iter_range(key, start, end) if size else iter(())
    return StreamingResponse(body, status_code=status, media_type="application/octet-stream", headers=headers)


MAX_RANGE_DIGITS = 19  # 10^19 bytes is past any object: a longer number is unsatisfiable


def _wanted_range(request: Request, *, etag: str, size: int) -> tuple[int, int] | None:
    header = request.headers.get("range")
    if header is None:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is of another version: send the whole object
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # not one byte range we understand: the RFC lets us ignore it
    first, last = match.groups()
    if max(len(first), len(last)) > MAX_RANGE_DIGITS:
        # longer than any size we store; Python's int() refuses over 4300 digits (a 500 before)
        raise _unsatisfiable(size)
    if first == "":  # the last n bytes
        n = int(last)
        if n == 0:
            raise _unsatisfiable(size)
        return max(size - n, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> Problem:
    return Problem(416, f"the range starts past the end of the object ({size} bytes)",
                   slug="range-not-satisfiable", field="Range", headers={"Content-Range": f"bytes */{size}"})


def _disposition(filename: str) -> str:
    quoted = quote(filename, safe="")
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"
