"""A job's checkpoints, kept in the artifact store so that any worker machine can resume the job.

The trainer (kdcore) reads and writes checkpoints in a local directory; this mirrors that
directory to the store's `jobs/{job}/checkpoints/` keys:

- `pull()`, before the run: every checkpoint the store holds for the job (all runs: student,
  baseline, sweep points) is copied into the local directory, each verified against the sha256 the
  store recorded (S3; a damaged object is left out and logged, and kdcore resumes from an older
  one). kdcore then picks the newest that verifies, exactly as it does on one machine.
- `push()`, after each checkpoint the trainer wrote (the local atomic write first): files that are
  new or rewritten since the last push are uploaded, and store copies of the files kdcore pruned
  locally are deleted, so the store holds what the local directory holds. `before_write` (the
  attempt's lease check, worker/runner.py) is called just before each upload becomes visible under
  its key and before each delete: when it raises, neither that write nor the rest of the push happens
  (its exception propagates; the next push sends what is still unsent).

A worker that dies between its local write and its push leaves the store one epoch behind: the
next attempt resumes from the epoch before and trains (and reports, idempotently) that epoch again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from jobs.artifact_store import ArtifactStore, ChecksumMismatch

log = logging.getLogger("worker")


class CheckpointMirror:
    def __init__(self, store: ArtifactStore, *, prefix: str, local_dir: Path,
                 before_write: Callable[[], None] | None = None):
        self.store, self.prefix, self.local_dir = store, prefix.rstrip("/"), Path(local_dir)
        self.before_write = before_write
        self._pushed: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) of the local file it mirrors

    def _key(self, path: Path) -> str:
        return f"{self.prefix}/{path.relative_to(self.local_dir).as_posix()}"

    def pull(self) -> int:
        """Copy the store's checkpoints of this job into the local directory; how many were copied."""
        copied = 0
        for key in self.store.list_keys(self.prefix):
            dest = self.local_dir.joinpath(*key[len(self.prefix) + 1:].split("/"))
            try:
                self.store.fetch(key, dest)
            except ChecksumMismatch as e:
                log.warning("checkpoint %s is damaged in the store (%s); resuming from an older one", key, e)
                continue
            except FileNotFoundError:  # pruned by a stale attempt between the listing and the copy
                continue
            stat = dest.stat()
            self._pushed[key] = (stat.st_size, stat.st_mtime_ns)
            copied += 1
        return copied

    def push(self) -> None:
        """Make the store hold the local directory's checkpoints: upload new or rewritten files,
        then delete the store's copies of files pruned here."""
        present = {}
        if self.local_dir.is_dir():
            for path in sorted(self.local_dir.rglob("*")):
                if path.is_file() and not path.name.startswith("."):  # not kdcore's temporary files
                    stat = path.stat()
                    present[self._key(path)] = (path, (stat.st_size, stat.st_mtime_ns))
        for key, (path, signature) in present.items():
            if self._pushed.get(key) != signature:
                self.store.put_file(key, path, before_commit=self.before_write)
                self._pushed[key] = signature
        for key in [k for k in self._pushed if k not in present]:
            if self.before_write is not None:
                self.before_write()
            self.store.delete(key)
            del self._pushed[key]
