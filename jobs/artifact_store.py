"""Where uploaded files and job outputs live: `ArtifactStore`, with a directory backend now and
room for an S3-compatible one when workers span machines.

Keys are relative, slash-separated paths ("files/file_ab12/teacher.safetensors"); each segment
starts with a letter or digit and holds only letters, digits, ".", "_" and "-". So no key can
climb out of the root ("..") or name a hidden or temporary file (those start with ".").

Writes are atomic: bytes go to a temporary file in the destination's directory, hashed on the way,
fsynced, then renamed over the key. A reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from jobs.errors import TooLarge

CHUNK_BYTES = 1024 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

__all__ = ["ArtifactStore", "LocalArtifactStore", "StoredObject", "TooLarge", "validate_key"]


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
    def write_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredObject:
        """Store the chunks under `key` atomically; TooLarge (nothing kept) past `max_bytes`."""

    def put_file(self, key: str, src_path: Path) -> StoredObject:
        """Copy a local file in under `key`."""

    def open(self, key: str) -> BinaryIO:
        """The object for reading (FileNotFoundError if missing)."""

    def local_path(self, key: str) -> Path:
        """A path on this machine holding the object (a remote store downloads it to a cache)."""

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""


class LocalArtifactStore:
    """Objects as files under `root` (KD_ARTIFACT_DIR)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def write_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
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
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # make the rename itself durable
        return StoredObject(key=key, bytes=size, sha256=digest.hexdigest())

    def put_file(self, key: str, src_path: Path) -> StoredObject:
        with open(src_path, "rb") as src:
            return self.write_stream(key, iter(lambda: src.read(CHUNK_BYTES), b""))

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
