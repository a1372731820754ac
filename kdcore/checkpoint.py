"""Training checkpoints: one dict of tensors and plain values, written atomically, checked on load.

A file is `MAGIC` (8 bytes) + sha256 of the payload (32 bytes) + payload, where the payload is
`torch.save(state)`. Only our own files are read, and only with `weights_only=True`, so a state
holds tensors, numbers, strings, None and lists/tuples/dicts of them: model, optimizer and
scheduler state dicts, epoch, global step, RNG states as tensors (`capture_rng_state`).

The trainer writes one per epoch with `save_checkpoint`; a re-claimed job resumes with
`load_latest_checkpoint`, which falls back to an older file when the newest is damaged and
says which ones it skipped and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from kdcore.errors import CheckpointError

MAGIC = b"KDCKPT01"
DIGEST_BYTES = 32
HEADER_BYTES = len(MAGIC) + DIGEST_BYTES
SUFFIX = ".kdckpt"
_NAME = re.compile(r"^epoch-(\d{5,})\.kdckpt$")
# Whether atomic_write also makes each file durable (fsync of the file, then of its directory). A
# process whose output directory is scratch turns it off: the service's worker copies every file it
# keeps to the artifact store, which syncs it, and removes the attempt's directory at the end, so a
# machine crash takes nothing it could resume from (bench/RESULTS.md, B6: 6 of a tiny job's 18
# fsyncs). Writes stay atomic for readers either way (a temporary file renamed over the target).
SYNC_WRITES = True
# Every zip archive (torch.save's format) ends with this record; 22 bytes when it has no comment.
_ZIP_END = b"PK\x05\x06"
_ZIP_END_BYTES = 22
# What torch.load(weights_only=True) reads back besides tensors and containers (exact types).
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    epoch: int
    sha256: str  # hex digest of the payload, as stored in the header
    bytes: int  # size of the whole file


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}{SUFFIX}"


def save_checkpoint(directory: Path, *, epoch: int, state: dict, keep: int = 2) -> CheckpointInfo:
    """Write `state` as `directory/epoch-{epoch:05d}.kdckpt` atomically, then prune to the newest
    `keep` files. Files with a higher epoch than this one belong to a run the caller abandoned
    (it resumed from an older checkpoint) and are removed as well, so they are never resumed from.

    Raises TypeError before anything is written when `state` holds a value that
    `torch.load(weights_only=True)` would refuse to read back."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    if keep < 2:
        raise ValueError(f"keep must be >= 2 so a damaged newest checkpoint has a fallback, got {keep}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(epoch)
    with atomic_write(path) as f:
        # Placeholder digest first; the payload is hashed on its way to disk and the digest
        # patched in afterwards, so the state is never held twice in memory.
        f.write(MAGIC + bytes(DIGEST_BYTES))
        writer = _HashingWriter(f)
        torch.save(state, writer)
        digest = writer.sha256.digest()
        f.seek(len(MAGIC))
        f.write(digest)
    info = CheckpointInfo(path=path, epoch=epoch, sha256=digest.hex(), bytes=path.stat().st_size)
    _prune(directory, current=epoch, keep=keep)
    return info


def load_checkpoint(path: Path, *, map_location: Any = "cpu") -> dict:
    """Read and verify one checkpoint. CheckpointError says why a file is refused:
    missing, not a kdcore checkpoint, truncated, checksum mismatch, or an unreadable payload."""
    state, _, _ = _read_verified(Path(path), map_location)
    return state


def load_latest_checkpoint(
    directory: Path, *, map_location: Any = "cpu"
) -> tuple[dict | None, CheckpointInfo | None, list[tuple[Path, str]]]:
    """Load the newest checkpoint that verifies. Returns (state, info, skipped), where skipped
    lists (path, reason) for every newer file that was damaged; (None, None, skipped) when none
    loads (or the directory holds none), meaning: start from scratch."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state, digest, size = _read_verified(path, map_location)
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
            continue
        return state, CheckpointInfo(path, _epoch_of(path), digest, size), skipped
    return None, None, skipped


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest epoch first (temp files are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and p.is_file()]
    return sorted(found, key=_epoch_of)


def capture_rng_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The RNG states a bit-exact resume needs, as tensors (weights_only-loadable): `rng_cpu`,
    and `rng_cuda` for a CUDA `device` (the keys of the trainer's checkpoints)."""
    device = torch.device(device)
    state: dict[str, Any] = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Inverse of `capture_rng_state`, after loading with any map_location (RNG states must be
    CPU byte tensors again)."""
    device = torch.device(device)
    torch.set_rng_state(state["rng_cpu"].cpu())
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file next to `path` for writing; on a clean exit flush, fsync, rename it over
    `path` and fsync the directory (the fsyncs only while SYNC_WRITES). On an exception the temp file is removed and `path` is left
    as it was, so readers see either the old file or the complete new one."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            if SYNC_WRITES:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if SYNC_WRITES:
        _fsync_directory(path.parent)


class _HashingWriter:
    """File-like object for torch.save that hashes what it passes to the real file."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _read_verified(path: Path, map_location: Any) -> tuple[dict, str, int]:
    """(state, payload sha256 hex, file size) of a file that passes every check."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path.name}: missing") from None
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise CheckpointError(f"{path.name}: not a kdcore checkpoint (wrong magic bytes)")
    if len(data) < HEADER_BYTES:
        raise CheckpointError(f"{path.name}: truncated ({len(data)} bytes, shorter than the header)")
    stored = data[len(MAGIC) : HEADER_BYTES]
    payload = memoryview(data)[HEADER_BYTES:]
    if hashlib.sha256(payload).digest() != stored:
        # The layout has no length field; a payload cut short no longer ends with its zip
        # end-of-archive record, which tells truncation apart from corruption in place.
        if payload[len(payload) - _ZIP_END_BYTES :][:4].tobytes() != _ZIP_END:
            raise CheckpointError(f"{path.name}: truncated (payload ends before its end-of-archive record)")
        raise CheckpointError(f"{path.name}: checksum mismatch (the file was modified or corrupted)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # the checksum held: a file we wrote, read by an incompatible torch
        raise CheckpointError(f"{path.name}: unreadable payload ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name}: payload is a {type(state).__name__}, not a dict")
    return state, stored.hex(), len(data)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Not possible on every platform (Windows): skip there.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(directory: Path, *, current: int, keep: int) -> None:
    found = list_checkpoints(directory)
    older = [p for p in found if _epoch_of(p) < current]
    newer = [p for p in found if _epoch_of(p) > current]
    doomed = newer + older[: max(len(older) - (keep - 1), 0)]
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        _fsync_directory(directory)


def _epoch_of(path: Path) -> int:
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a checkpoint name")
    return int(match.group(1))


def _check_plain(value: Any, where: str) -> None:
    # Refuse at save time what weights_only would refuse at resume time: otherwise every
    # checkpoint of the run would be written fine and be unloadable when it matters. Exact
    # types, because subclasses (numpy scalars are floats, namedtuples are tuples) are refused.
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _PLAIN:
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"a key of {where}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple, set):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint holds tensors and "
        "plain values only (torch.load(weights_only=True) must read it back)"
    )
