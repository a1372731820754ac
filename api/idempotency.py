"""The `Idempotency-Key` header of `POST /v1/jobs` and `POST /v1/files`: a retried request creates
nothing twice.

A key is 1-255 printable ASCII characters (else 422 naming the header), scoped to the tenant, and
kept KD_IDEMPOTENCY_TTL_SECONDS (24 h) after its request succeeded. With a key:

- the first request claims it (an `in_flight` row, committed before any work, so a concurrent
  request sees it), does the work, and stores its response in the transaction that writes the job
  or file row;
- the same key with the same request answers the stored response again (status and body, with
  `Idempotent-Replayed: true`) and creates nothing;
- the same key with a different request is a 422 naming `Idempotency-Key`;
- the same key while its first request is still running is a 409: retry later;
- a request that fails (any 4xx or 5xx after the claim: a bad spec, a quota, an invalid upload)
  deletes its claim, so the client may fix the request and retry with the same key.

The request's fingerprint is the sha256 of a canonical JSON array: for a job, the method, the path
and the JSON body with sorted keys; for a file, the method, the path, the uploaded content's sha256,
the purpose and the filename. An upload's content is known only once it has arrived, so
`POST /v1/files` claims its key with no fingerprint before reading the body (a concurrent retry
gets its 409 at once, without uploading), and the fingerprint is compared, or stored, after.

A claim whose request never finished (the API process died) blocks its key for
KD_IDEMPOTENCY_IN_FLIGHT_SECONDS (1 h); after that the key may be claimed again, and the old
request, if it was only slow, can no longer finish: it fails with 409 and creates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.problems import Problem
from jobs import idempotency_repo
from jobs.settings import Settings
from jobs.tables import DONE, utcnow

log = logging.getLogger("api")
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
CLAIM_TRIES = 3  # a key released or expired between our INSERT and our SELECT: claim it again


async def idempotency_key(value: Annotated[str | None, Header(
        alias=HEADER, description="1-255 printable ASCII characters; a retry with the same key and the "
                                  "same request creates nothing and answers the first response again")] = None,
                    ) -> str | None:
    """The request's Idempotency-Key, or None; 422 naming the header when it is malformed. Async: it
    runs on the event loop (a plain `def` dependency is a hop to a worker thread and back)."""
    if value is not None and not (1 <= len(value) <= MAX_KEY_LENGTH and all(" " <= c <= "~" for c in value)):
        raise Problem(422, f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters", field=HEADER)
    return value


IdempotencyKeyDep = Annotated[str | None, Depends(idempotency_key)]


def fingerprint(*parts: Any) -> str:
    """sha256 of the parts as canonical JSON (sorted keys, no spaces, ASCII escapes)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    fingerprint: str
    status_code: int
    body: Any


class IdempotentRequest:
    """One POST's use of its Idempotency-Key; every method does nothing when the request has none.

        idempotent = IdempotentRequest(session, settings, tenant_id=..., key=...)
        idempotent.begin(fp)                        # 409 while another request holds the key
        if (replay := idempotent.replay(fp)) is not None:
            return replay                           # 422 if the key was used for something else
        with idempotent.released_on_error():        # any error: roll back, free the key
            ...create the row...
            idempotent.finish(fp, 201, body)        # same transaction as the row
            session.commit()
    """

    def __init__(self, session: Session | None, settings: Settings, *, tenant_id: str, key: str | None):
        # `session` may be swapped between calls by a route that uses a short session per step
        self.session, self.settings, self.tenant_id, self.key = session, settings, tenant_id, key
        self.claim_id: int | None = None  # our in_flight row
        self.stored: StoredResponse | None = None  # the finished request this key already made

    @property
    def claimed(self) -> bool:
        """This request holds its key: `finish` will store its response."""
        return self.claim_id is not None

    @property
    def replaying(self) -> bool:
        """The key already finished a request: this one answers its response (or a 422)."""
        return self.stored is not None

    def begin(self, request_fingerprint: str | None = None) -> None:
        """Claim the key (committed at once), or find the request that finished with it; 409 while
        another request holds it. `request_fingerprint` is None when it is not known yet (uploads)."""
        if self.key is None:
            return
        for _ in range(CLAIM_TRIES):
            now = utcnow()
            self.claim_id = idempotency_repo.claim(
                self.session, tenant_id=self.tenant_id, key=self.key, fingerprint=request_fingerprint, now=now,
                hold_seconds=self.settings.idempotency_in_flight_seconds)
            row = None if self.claim_id is not None else idempotency_repo.find(
                self.session, tenant_id=self.tenant_id, key=self.key, now=now)
            if row is not None and row.status == DONE:
                self.stored = StoredResponse(row.fingerprint, row.response_status, row.response_body)
            self.session.commit()  # the claim is visible from here on
            if self.claim_id is not None:
                self._purge(now)
                return
            if self.stored is not None:
                return
            if row is not None:  # in flight
                break
            # else the holder released it (its request failed) or it expired since our INSERT: again
        raise Problem(409, "a request with this key is still in progress; retry later",
                      slug="idempotency-key-in-flight", field=HEADER)

    def replay(self, request_fingerprint: str) -> JSONResponse | None:
        """The stored response if this key already finished this same request; None when this
        request holds the key (or has none); 422 if the key was used with a different request."""
        if self.stored is None:
            return None
        if self.stored.fingerprint != request_fingerprint:
            raise Problem(422, "this key was already used with a different request; send a new key for a "
                               "new request", slug="idempotency-key-reused", field=HEADER)
        return JSONResponse(self.stored.body, status_code=self.stored.status_code,
                            headers={REPLAYED_HEADER: "true"})

    def finish(self, request_fingerprint: str, status_code: int, body: Any) -> None:
        """Store the response in the caller's transaction (the caller commits)."""
        if self.claim_id is None:
            return
        if not idempotency_repo.finish(self.session, claim_id=self.claim_id, fingerprint=request_fingerprint,
                                       response_status=status_code, response_body=body, now=utcnow(),
                                       ttl_seconds=self.settings.idempotency_ttl_seconds):
            raise Problem(409, "this request held the key longer than KD_IDEMPOTENCY_IN_FLIGHT_SECONDS and "
                               "another request took it over; nothing was created", slug="idempotency-key-in-flight",
                          field=HEADER)
        self.claim_id = None  # finished: no longer ours to release

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """On any exception, roll back and delete our claim so the same key can be retried."""
        try:
            yield
        except BaseException:
            self._release()
            raise

    def release(self) -> None:
        """Roll back and delete our claim (the key may be retried); a no-op once finished."""
        self._release()

    def _release(self) -> None:
        if self.claim_id is None:
            return
        try:
            self.session.rollback()
            idempotency_repo.release(self.session, claim_id=self.claim_id)
            self.session.commit()
        except SQLAlchemyError:  # the error being raised matters more; the claim expires anyway
            log.exception("could not release idempotency key claim %s", self.claim_id)
            self.session.rollback()
        self.claim_id = None

    def _purge(self, now) -> None:
        """Opportunistic cleanup of expired keys (any tenant's), one batch per claim."""
        try:
            idempotency_repo.purge_expired(self.session, now=now)
            self.session.commit()
        except SQLAlchemyError:
            log.warning("could not purge expired idempotency keys", exc_info=True)
            self.session.rollback()
