"""Stored upload objects that no `files` row names, and their removal.

`POST /v1/files` puts the bytes in the artifact store under `files/{tenant_id}/{file_id}` and then
commits the row; `DELETE /v1/files/{id}` commits the row's deletion and then deletes the object. A
process killed between the two steps leaves an object that is never listed, never counted in the
quota and never deleted. `delete_unrecorded_uploads` finds the objects under `files/` older than a
grace period that no row names, and deletes them.

Two rules keep it from ever deleting an object a row names, whatever the timing:
- it decides per object under the owning tenant's row lock (the lock the upload's own commit
  takes, `quotas_repo.lock_tenant`), re-reading the rows under that lock; and
- the upload, under that same lock, checks that its object is still there before it inserts the
  row (api/routes/files.py). So either the row is committed first (and the object is kept), or the
  object is gone first (and the upload is refused, nothing recorded).
The grace period only keeps it from removing the object of an upload still between its put and its
commit (seconds) and so failing that upload: the API uses KD_IDEMPOTENCY_IN_FLIGHT_SECONDS, the time
after which a request that never finished is taken to have died.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import quotas_repo
from jobs.artifact_store import ArtifactStore
from jobs.tables import File

FILES_PREFIX = "files"  # keys files/{tenant_id}/{file_id} (api/routes/files.py)
BATCH = 500


def delete_unrecorded_uploads(store: ArtifactStore, sessions: Callable[[], Session], *, older_than: float,
                              now: float | None = None) -> list[str]:
    """Delete the objects under `files/` last written more than `older_than` seconds before `now`
    that no files row names; return their keys."""
    cutoff = (time.time() if now is None else now) - older_than
    candidates = store.list_older_than(FILES_PREFIX, cutoff)
    suspects: list[str] = []
    for i in range(0, len(candidates), BATCH):  # a first pass by primary key, without locks
        chunk = candidates[i:i + BATCH]
        with sessions() as session:
            named = set(session.scalars(select(File.storage_key).where(
                File.id.in_({key.rsplit("/", 1)[-1] for key in chunk}))))
        suspects += [key for key in chunk if key not in named]
    deleted = []
    for key in suspects:
        with sessions() as session:
            parts = key.split("/")
            if len(parts) == 3:  # files/{tenant_id}/{file_id}: the lock the upload's commit takes
                quotas_repo.lock_tenant(session, tenant_id=parts[1])
            if session.scalar(select(File.id).where(File.storage_key == key).limit(1)) is None:
                store.delete(key)
                deleted.append(key)
            session.commit()  # the lock is held until the object is gone
    return deleted
