"""Streaming multipart uploads with a size cap.

The request body is parsed as it arrives (python-multipart's push parser): the `file` part goes
straight to a temporary file, hashed on the way; the upload stops with 413 as soon as it passes
`KD_MAX_UPLOAD_BYTES`, whether or not the client sent Content-Length. Nothing is kept on failure.
Form fields other than the file are limited to ALLOWED_FORM_FIELDS (a client never sets a file's
tenant, id, size or hash), and the file name the client sent is kept only as a display name:
its last path component, without control characters, at most MAX_FILENAME_CHARS long.

A body must end with its closing boundary (`--BOUNDARY--`): one cut short is a 400, not a shorter
file. The boundary itself is at most MAX_BOUNDARY_LENGTH characters (python-multipart's own cap).

The temporary file `{KD_DATA_DIR}/tmp/upload-*.part` is held under an exclusive flock(2) from before
it has that name until it is removed (`ReceivedUpload.discard`). The kernel drops the lock when its
process dies, however it dies (kill -9 included), so `sweep_abandoned_uploads` tells the files of
dead uploads from live ones without guessing from ages or pids, whichever API process wrote them
(KD_API_WORKERS > 1, or several hosts sharing the data directory).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from fastapi import Request
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header

from api.problems import Problem

MAX_FORM_FIELD_BYTES = 64 * 1024  # non-file fields (purpose) are tiny; refuse anything bigger
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers on top of the file itself
ALLOWED_FORM_FIELDS = frozenset({"purpose"})  # besides `file`
MAX_FILENAME_CHARS = 255  # the files.filename column
TEMP_PREFIX, TEMP_SUFFIX = "upload-", ".part"  # {data_dir}/tmp/upload-*.part, locked while in use
STAGING_PREFIX = ".new-upload-"  # a temp file for the microseconds before it is locked and renamed
STAGING_STALE_SECONDS = 60.0  # a staging file this old belongs to a process that died in between


@dataclass
class ReceivedUpload:
    path: Path  # temporary file; the caller moves it into the store, then calls discard()
    filename: str
    bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)
    lock: BinaryIO | None = field(default=None, repr=False)  # the open temp file, holding its flock

    def discard(self) -> None:
        """Remove the temporary file, then give up its lock (in that order: no sweeper ever finds it
        unlocked while this process lives)."""
        _discard(self.path, self.lock)
        self.lock = None


async def receive_upload(request: Request, *, max_bytes: int, tmp_dir: Path, idle_timeout: float = 30.0,
                         allowed_fields: frozenset[str] = ALLOWED_FORM_FIELDS) -> ReceivedUpload:
    """Parse a multipart/form-data body with one `file` part and form fields among `allowed_fields`;
    413 past max_bytes, 400 if malformed (a boundary over MAX_BOUNDARY_LENGTH characters, a body
    without its closing boundary), 422 for a second file or a field not allowed, 408 when no bytes
    arrive for `idle_timeout` seconds. The caller calls `discard()` on the result once done with it."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(415, "send multipart/form-data with a `file` part and a `purpose` field",
                      slug="unsupported-media-type")
    boundary = params[b"boundary"]
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise Problem(400, f"the multipart boundary is {len(boundary)} characters long; it must be 1 to "
                           f"{MAX_BOUNDARY_LENGTH} (RFC 2046 recommends at most 70)", slug="malformed-body")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(max_bytes)

    state = _PartState()
    digest = hashlib.sha256()

    def on_header_field(data, start, end):
        state.header_name += data[start:end]

    def on_header_value(data, start, end):
        state.header_value += data[start:end]

    def on_header_end():
        state.headers[state.header_name.decode("latin-1").lower()] = state.header_value
        state.header_name, state.header_value = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(state.headers.get("content-disposition", b""))
        state.name = disp.get(b"name", b"").decode("utf-8", "replace")
        state.filename = disp.get(b"filename", b"").decode("utf-8", "replace")
        state.value = b""
        if state.name == "file":
            if state.file_seen:
                raise Problem(422, "send exactly one file part", slug="invalid-field", field="file")
            state.file_seen = True
            state.received_filename = clean_filename(state.filename)
        elif state.name not in allowed_fields:
            shown = state.name[:64] + ("..." if len(state.name) > 64 else "")
            expected = ", ".join(f"`{f}`" for f in sorted(allowed_fields))
            raise Problem(422, f"is not accepted; send `file` and {expected}", slug="invalid-field",
                          field=shown or "(unnamed part)")

    def on_part_data(data, start, end):
        chunk = data[start:end]
        if state.name == "file":
            state.size += len(chunk)
            if state.size > max_bytes:
                raise _too_large(max_bytes)
            digest.update(chunk)
            out.write(chunk)
        else:
            state.value += chunk
            if len(state.value) > MAX_FORM_FIELD_BYTES:
                raise Problem(422, f"is longer than {MAX_FORM_FIELD_BYTES} bytes", slug="invalid-field",
                              field=state.name)

    def on_part_end():
        if state.name and state.name != "file":
            state.fields[state.name] = state.value.decode("utf-8", "replace")
        state.headers = {}

    def on_end():
        state.ended = True

    try:
        parser = MultipartParser(boundary, callbacks={
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
        })
    except Exception:
        raise Problem(400, "the multipart boundary cannot be parsed", slug="malformed-body") from None
    tmp_path, out = _locked_temp_file(tmp_dir)
    try:
        chunks = request.stream().__aiter__()
        while True:
            try:
                with anyio.fail_after(idle_timeout):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise Problem(408, f"the upload sent nothing for {idle_timeout:g} s and was cut "
                                   "(KD_UPLOAD_IDLE_TIMEOUT_SECONDS); nothing was kept",
                              slug="upload-timeout") from None
            parser.write(chunk)
        parser.finalize()
        if not state.ended:  # python-multipart's finalize() does not check this itself
            raise Problem(400, "the multipart body ended before its closing boundary (--BOUNDARY--): it was "
                               "cut short, so its last part may be incomplete; nothing was kept",
                          slug="malformed-body")
        out.flush()
        os.fsync(out.fileno())
    except Problem:
        _discard(tmp_path, out)
        raise
    except Exception:
        _discard(tmp_path, out)
        raise Problem(400, "the multipart body is malformed", slug="malformed-body") from None
    except BaseException:  # cancelled (the server stops): nothing is kept either
        _discard(tmp_path, out)
        raise
    if not state.file_seen:
        _discard(tmp_path, out)
        raise Problem(422, "a `file` part is required", slug="invalid-field", field="file")
    return ReceivedUpload(tmp_path, state.received_filename, state.size, digest.hexdigest(), state.fields,
                          lock=out)


def _locked_temp_file(tmp_dir: Path) -> tuple[Path, BinaryIO]:
    """A new `upload-*.part` in tmp_dir, open for writing and under this process's exclusive flock.
    It is created under a staging name, locked, then renamed: a file named `upload-*.part` whose
    lock can be taken is never one being written (see sweep_abandoned_uploads)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=tmp_dir, prefix=STAGING_PREFIX, suffix=TEMP_SUFFIX)
    out = os.fdopen(fd, "wb")
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX)
        path = tmp_dir / (TEMP_PREFIX + Path(staging).name.removeprefix(STAGING_PREFIX))
        os.rename(staging, path)
    except BaseException:
        _discard(Path(staging), out)
        raise
    return path, out


def _discard(path: Path, lock: BinaryIO | None) -> None:
    path.unlink(missing_ok=True)  # first: a sweeper may take the lock the moment it is given up
    if lock is not None:
        lock.close()


def sweep_abandoned_uploads(tmp_dir: Path) -> list[Path]:
    """Remove the temporary files of uploads whose process died (kill -9, OOM, power loss) and
    return them. Safe while other API processes upload into the same directory: a file whose flock
    this call can take has no live owner, and a staging file older than STAGING_STALE_SECONDS was
    left between its creation and its rename."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(STAGING_PREFIX):
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > STAGING_STALE_SECONDS
            except FileNotFoundError:
                continue
            if stale:
                path.unlink(missing_ok=True)
                removed.append(path)
            continue
        if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)) \
                or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or not a plain file
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live upload holds it
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                continue  # its owner removed it meanwhile
            if same:
                path.unlink(missing_ok=True)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def clean_filename(raw: str) -> str:
    """The display name to keep for a client's file name: its last path component, control
    characters removed, at most MAX_FILENAME_CHARS (the extension kept); "upload" if nothing is left."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = f"{dot}{ext}" if dot and len(ext) <= 16 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep)] + keep
    return name


def _too_large(max_bytes: int) -> Problem:
    return Problem(413, f"the upload is larger than the limit of {max_bytes} bytes (KD_MAX_UPLOAD_BYTES)",
                   slug="too-large")


@dataclass
class _PartState:
    header_name: bytes = b""
    header_value: bytes = b""
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str = ""
    value: bytes = b""
    size: int = 0
    file_seen: bool = False
    received_filename: str = "upload"
    fields: dict[str, str] = field(default_factory=dict)
    ended: bool = False  # the closing boundary was read
