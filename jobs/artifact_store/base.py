"""The store's interface (`ArtifactStore`), its key rules and the one atomic, hashed write that
every file the store or its callers write goes through (`write_atomically`)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from jobs.errors import TooLarge

CHUNK_BYTES = 1024 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"  # what an interrupted write leaves (remove_stale_temporaries)


class ChecksumMismatch(OSError):
    """A copy's sha256 differs from the one recorded for the object: it is damaged (nothing kept)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    bytes: int
    sha256: str  # hex


def validate_key(key: str) -> str:
    """The key itself, or ValueError for an absolute path, "..", an empty or hidden segment."""
    if not isinstance(key, str) or not key:
        raise ValueError("a storage key must be a non-empty string")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError(f"invalid storage key {key!r}: segment {segment!r} is empty, relative, "
                             "hidden or holds characters other than letters, digits, '.', '_', '-'")
    return key


class ArtifactStore(Protocol):
    def write_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None,
                     before_commit: Callable[[], None] | None = None) -> StoredObject:
        """Store the chunks under `key` atomically; TooLarge (nothing kept) past `max_bytes`.
        `before_commit`: called once the bytes are written, just before they appear under `key`
        (the rename; in S3 the PUT or the copy that ends a multipart upload); when it raises, nothing
        under `key` changes, no temporary stays, and its exception propagates."""

    def put_file(self, key: str, src_path: Path, *, before_commit: Callable[[], None] | None = None) -> StoredObject:
        """Copy a local file in under `key` (`before_commit` as in write_stream)."""

    def open(self, key: str) -> BinaryIO:
        """The object for reading (FileNotFoundError if missing)."""

    def local_path(self, key: str) -> Path:
        """A path on this machine holding the object (a remote store downloads it to a cache)."""

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes `start`..`end` (inclusive; None: to the end) in chunks, streamed
        (FileNotFoundError if missing)."""

    def fetch(self, key: str, dest: Path, *, sha256: str | None = None) -> Path:
        """Copy the object to the file `dest` (atomically) and check its sha256 against `sha256`
        (or, when None, the one the store recorded): ChecksumMismatch, and no `dest`, when they differ."""

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under the folder `prefix`, sorted."""

    def list_older_than(self, prefix: str, cutoff: float) -> list[str]:
        """Keys under the folder `prefix` last written before `cutoff` (seconds since the epoch), sorted."""

    def remove_stale_temporaries(self, cutoff: float) -> list[str]:
        """Remove what interrupted writes left (never an object under a key) that was last written
        before `cutoff` (seconds since the epoch); return what was removed."""

    def ping(self) -> None:
        """Raise when the store cannot be used (for /readyz): a directory that cannot be created or
        written, a bucket that is missing or refuses these credentials."""


def write_atomically(dest: Path, chunks: Iterable[bytes], *, max_bytes: int | None = None,
                     sha256: str | None = None, what: str = "",
                     before_commit: Callable[[], None] | None = None) -> tuple[int, str]:
    """Write chunks to `dest` through a temporary file in its directory, hashing them on the way,
    then fsync, rename over `dest` and fsync the directory (the rename itself is durable). Returns
    (bytes, sha256 hex). Past `max_bytes`: TooLarge; a `sha256` given that differs:
    ChecksumMismatch; `before_commit` (called just before the rename) raising: its exception.
    Either way, or on any error, nothing at `dest` changes and no temporary stays."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as tmp:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(f"larger than the limit of {max_bytes} bytes", limit=max_bytes)
                digest.update(chunk)
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ChecksumMismatch(f"{what}: the copy's sha256 {digest.hexdigest()} differs from the recorded "
                                   f"{sha256}; the stored object is damaged")
        if before_commit is not None:
            before_commit()
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return size, digest.hexdigest()


def write_verified(dest: Path, chunks: Iterable[bytes], *, sha256: str | None, what: str) -> Path:
    """`write_atomically` for a copy of a stored object: ChecksumMismatch, and nothing at `dest`,
    when `sha256` is given and differs."""
    write_atomically(dest, chunks, sha256=sha256, what=what)
    return Path(dest)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
