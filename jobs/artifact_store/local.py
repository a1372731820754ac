"""The directory store: objects as files under KD_ARTIFACT_DIR, on a disk every process shares."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Iterator

from jobs.artifact_store.base import (CHUNK_BYTES, TEMP_PREFIX, TEMP_SUFFIX, StoredObject, validate_key,
                                      write_atomically, write_verified)


class LocalArtifactStore:
    """Objects as files under `root` (KD_ARTIFACT_DIR)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def write_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None,
                     before_commit: Callable[[], None] | None = None) -> StoredObject:
        size, sha256 = write_atomically(self._path(key), chunks, max_bytes=max_bytes, what=key,
                                        before_commit=before_commit)
        return StoredObject(key=key, bytes=size, sha256=sha256)

    def put_file(self, key: str, src_path: Path, *, before_commit: Callable[[], None] | None = None) -> StoredObject:
        with open(src_path, "rb") as src:
            return self.write_stream(key, iter(lambda: src.read(CHUNK_BYTES), b""), before_commit=before_commit)

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
                if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
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
