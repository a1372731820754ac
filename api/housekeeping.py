"""What a crashed API process leaves behind, removed by the API processes that live: at start-up
and then every `sweep_interval` seconds, in a worker thread (never on the event loop).

- upload temp files (`{KD_DATA_DIR}/tmp/upload-*.part`) whose process died mid-body: those whose
  lock no live process holds (api/uploads.py, `sweep_abandoned_uploads`);
- stored upload objects that no files row names (killed between the store's put and the database
  commit, or between a row's deletion and its object's), once older than the grace period
  KD_IDEMPOTENCY_IN_FLIGHT_SECONDS (jobs/orphans.py, which says why no recorded object can go);
- temporaries of the store's interrupted writes (`.tmp-*.part`, unfinished S3 multipart uploads)
  not written to for TEMPORARY_GRACE_SECONDS (workers write through the store too: a day leaves
  any live write alone).

Every API process runs it (KD_API_WORKERS > 1 included); two doing the same round remove nothing
twice that matters, since every removal is idempotent. A round that fails (the store or the
database unreachable) is logged and the next one tries again.
"""

from __future__ import annotations

import logging
import random
import time

import anyio
from sqlalchemy.pool import NullPool

from api.uploads import sweep_abandoned_uploads
from jobs.artifact_store import ArtifactStore
from jobs.db import make_engine, make_sessionmaker
from jobs.orphans import delete_unrecorded_uploads
from jobs.settings import Settings

log = logging.getLogger("api.housekeeping")
TEMPORARY_GRACE_SECONDS = 24 * 3600.0
MIN_INTERVAL_SECONDS, MAX_INTERVAL_SECONDS = 1.0, 900.0


def sweep_interval(grace: float) -> float:
    """A quarter of the grace period, between 1 s and 15 min: an orphan goes within about 1.25 × grace."""
    return min(max(grace / 4, MIN_INTERVAL_SECONDS), MAX_INTERVAL_SECONDS)


def sweep_once(settings: Settings, store: ArtifactStore, sessions) -> dict[str, list]:
    """One round; returns what it removed (each kind is tried even when another fails)."""
    grace = float(settings.idempotency_in_flight_seconds)
    removed: dict[str, list] = {}
    steps = {
        "upload temp files": lambda: sweep_abandoned_uploads(settings.data_dir / "tmp"),
        "stored uploads without a file row": lambda: delete_unrecorded_uploads(store, sessions, older_than=grace),
        "store temporaries": lambda: store.remove_stale_temporaries(
            time.time() - max(grace, TEMPORARY_GRACE_SECONDS)),
    }
    for what, step in steps.items():
        try:
            removed[what] = step()
        except Exception:
            log.exception("housekeeping: removing %s failed; the next round tries again", what)
            continue
        if removed[what]:
            log.warning("housekeeping: removed %d %s left by a process that died: %s", len(removed[what]), what,
                        ", ".join(map(str, removed[what][:10])) + (" ..." if len(removed[what]) > 10 else ""))
    return removed


async def keep_clean(settings: Settings, store: ArtifactStore) -> None:
    """Sweep now, then every `sweep_interval` (± 20 %, so processes started together spread out),
    until cancelled. Its database connection is its own (no pool): it never takes a request's."""
    engine = make_engine(settings.db_url, lock_timeout_ms=settings.db_lock_timeout_ms,
                         idle_in_transaction_timeout_ms=settings.db_idle_in_transaction_timeout_ms,
                         poolclass=NullPool)
    sessions = make_sessionmaker(engine)
    interval = sweep_interval(float(settings.idempotency_in_flight_seconds))
    try:
        while True:
            await anyio.to_thread.run_sync(sweep_once, settings, store, sessions)
            await anyio.sleep(interval * random.uniform(0.8, 1.2))
    finally:
        engine.dispose()
