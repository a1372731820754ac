"""Where uploaded files and job outputs live: `ArtifactStore`, with two backends behind one
interface: a directory (`LocalArtifactStore`, KD_ARTIFACT_DIR: every process shares one disk) and
S3-compatible object storage (`S3ArtifactStore` in s3.py, KD_ARTIFACT_URL=
s3://bucket/prefix: workers on other machines share only the bucket). `make_store(settings)`
picks the one the settings name.

Nothing outside this package assumes the objects are files: downloads stream
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

from typing import TYPE_CHECKING

from jobs.artifact_store.base import (CHUNK_BYTES, ArtifactStore, ChecksumMismatch, StoredObject, validate_key,
                                      write_atomically, write_verified)
from jobs.artifact_store.local import LocalArtifactStore
from jobs.errors import TooLarge

if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["CHUNK_BYTES", "ArtifactStore", "ChecksumMismatch", "LocalArtifactStore", "StoredObject", "TooLarge",
           "make_store", "validate_key", "write_atomically", "write_verified"]


def make_store(settings: "Settings") -> ArtifactStore:
    """The store the settings name: S3 for KD_ARTIFACT_URL=s3://..., else the directory."""
    if settings.artifact_url is not None:
        from jobs.artifact_store.s3 import S3ArtifactStore  # boto3 is imported only when used

        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.artifacts_path)
