"""Where uploaded files and job outputs live: `ArtifactStore`, with two backends behind one
interface: a directory (`LocalArtifactStore`, KD_ARTIFACT_DIR: every process shares one disk) and
S3-compatible object storage (`S3ArtifactStore` in jobs/artifact_store_s3.py, KD_ARTIFACT_URL=
s3://bucket/prefix: workers on other machines share only the bucket). `make_store(settings)`
picks the one the settings name.

Nothing outside this module and its S3 sibling assumes the objects are files: downloads stream
with `iter_range`, a process that needs a file on its own disk asks for `fetch` (a verified copy
in a directory it owns) or `local_path` (the object itself for a directory store, a verified
cached copy for a remote one).

Keys are relative, slash-separated paths ("files/file_ab12/teacher.safetensors"); each segment
starts with a letter or digit and holds only letters, digits, ".", "_" and "-". So no key can
climb out of the root ("..") or name a hidden or temporary file (those start with ".").

Writes are atomic: bytes go to a temporary file in the destination's directory, hashed on the way,
fsynced, then renamed over the key. A reader sees the old object or the new one, never half of one.
A process killed mid-write leaves its temporary behind (`.tmp-*.part` here, an unfinished multipart
upload on S3); `remove_stale_temporaries` removes those not written to since a cutoff.
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

from typing import TYPE_CHECKING, Iterator

from jobs.errors import TooLarge

if TYPE_CHECKING:
    from jobs.settings import Settings

CHUNK_BYTES = 1024 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

__all__ = ["ArtifactStore", "ChecksumMismatch", "LocalArtifactStore", "StoredObject", "TooLarge", "make_store",
           "validate_key"]


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


def make_store(settings: "Settings") -> ArtifactStore:
    """The store the settings name: S3 for KD_ARTIFACT_URL=s3://..., else the directory."""
    if settings.artifact_url is not None:
        from jobs.artifact_store_s3 import S3ArtifactStore  # boto3 is imported only when used

        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.artifacts_path)


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

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        f = open(self._path(key), "rb")  # opened now, so a missing object fails before streaming
        return _read_chunks(f, start, end)

    def fetch(self, key: str, dest: Path, *, sha256: str | None = None) -> Path:
        with open(self._path(key), "rb") as src:
            return write_verified(dest, iter(lambda: src.read(CHUNK_BYTES), b""), sha256=sha256, what=key)

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

    def list_keys(self, prefix: str) -> list[str]:
        top = self._path(prefix)
        if not top.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)).replace(os.sep, "/") for p in top.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(top).parts))

    def list_older_than(self, prefix: str, cutoff: float) -> list[str]:
        out = []
        for key in self.list_keys(prefix):
            try:
                if self._path(key).stat().st_mtime < cutoff:  # os.replace keeps the written file's mtime
                    out.append(key)
            except FileNotFoundError:  # deleted meanwhile
                pass
        return out

    def remove_stale_temporaries(self, cutoff: float) -> list[str]:
        removed = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                if not (name.startswith(".tmp-") and name.endswith(".part")):
                    continue
                path = Path(directory, name)
                try:
                    if path.stat().st_mtime < cutoff:  # a live write touches it with every chunk
                        path.unlink()
                        removed.append(str(path.relative_to(self.root)).replace(os.sep, "/"))
                except FileNotFoundError:  # renamed or removed by its writer meanwhile
                    pass
        return removed


def _read_chunks(f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = None if end is None else end - start + 1
        while left is None or left > 0:
            chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def write_verified(dest: Path, chunks: Iterable[bytes], *, sha256: str | None, what: str) -> Path:
    """Write chunks to `dest` atomically (a temporary file renamed over it), hashing them; when
    `sha256` is given and differs, ChecksumMismatch and nothing at `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as tmp:
            for chunk in chunks:
                digest.update(chunk)
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ChecksumMismatch(f"{what}: the copy's sha256 {digest.hexdigest()} differs from the recorded "
                                   f"{sha256}; the stored object is damaged")
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
