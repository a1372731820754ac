"""/v1/files: upload, list, inspect, download and delete teachers, datasets and logits."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api import quotas
from api.downloads import stored_download
from api.deps import (BriefTenantDep, PageAfter, PageLimit, SessionDep, SettingsDep, StoreDep, TenantDep,
                      in_session)
from api.file_inspection import inspect_upload_bounded
from api.idempotency import IdempotencyKeyDep, IdempotentRequest, fingerprint
from api.problems import PROBLEM_SCHEMA, Problem
from api.schemas.examples import UPLOAD_EXAMPLES
from api.schemas.files import FileList, FileOut, Purpose
from api.uploads import receive_upload
from jobs import files_repo

router = APIRouter(prefix="/v1/files", tags=["files"], responses={401: PROBLEM_SCHEMA, 404: PROBLEM_SCHEMA})

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file", "purpose"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"type": "string", "enum": [p.value for p in Purpose]},
            },
        }, "examples": UPLOAD_EXAMPLES}},
    }
}


@router.post("", status_code=201, response_model=FileOut, openapi_extra=UPLOAD_BODY,
             responses={409: PROBLEM_SCHEMA, 413: PROBLEM_SCHEMA, 415: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA,
                        429: PROBLEM_SCHEMA})
async def upload_file(request: Request, tenant: BriefTenantDep, store: StoreDep, settings: SettingsDep,
                      key: IdempotencyKeyDep) -> JSONResponse:
    """Upload a file (multipart: `file`, `purpose`); its content is validated before it is kept."""
    # No connection is held while the body arrives or is inspected: each database step takes its own
    # session and slot in a worker thread (`in_session`), and a step that fails is rolled back before
    # its error propagates. A request that waits on its client, or on another request's tenant lock,
    # therefore blocks neither the event loop nor the pool (issue 16: a 429 that kept its tenant row
    # locked while the loop waited on that lock froze the API for good).
    tenant_id = tenant.id
    idempotent = IdempotentRequest(None, settings, tenant_id=tenant_id, key=key)

    def begin(session) -> None:  # claimed before the body arrives; the fingerprint needs its sha256
        idempotent.session = session
        idempotent.begin()
        if not idempotent.replaying:
            quotas.refuse_declared_upload(request, session, tenant_id=tenant_id, settings=settings)

    def release(session) -> None:
        idempotent.session = session
        idempotent.release()

    storage_key = None
    try:
        await in_session(request, begin)
        upload = await receive_upload(request, max_bytes=settings.max_upload_bytes, tmp_dir=settings.data_dir / "tmp",
                                      idle_timeout=settings.upload_idle_timeout_seconds)
        try:
            purpose = upload.fields.get("purpose")
            request_fingerprint = fingerprint(request.method, request.url.path, upload.sha256, purpose,
                                              upload.filename)
            if (replay := idempotent.replay(request_fingerprint)) is not None:
                return replay
            if purpose not in {p.value for p in Purpose}:
                raise Problem(422, f"must be one of {', '.join(p.value for p in Purpose)}", field="purpose")
            await in_session(request, lambda session: quotas.check_stored_bytes(
                session, tenant_id=tenant_id, settings=settings, adding=upload.bytes))
            fmt, info = await inspect_upload_bounded(request.app, upload.path, purpose, settings)
            file_id = files_repo.new_file_id()
            storage_key = f"files/{tenant_id}/{file_id}"
            await run_in_threadpool(store.put_file, storage_key, upload.path)
        finally:
            upload.discard()

        def create(session) -> dict:
            idempotent.session = session
            # again, under the tenant's lock: this one decides (rolled back at once if it refuses)
            quotas.check_stored_bytes(session, tenant_id=tenant_id, settings=settings, adding=upload.bytes, lock=True)
            # under the same lock the sweep of unrecorded objects takes (jobs/orphans.py): the object is
            # either still there now, and kept once this row is committed, or already removed
            if not store.exists(storage_key):
                raise Problem(503, "the uploaded file was removed from the store before it could be recorded "
                                   "(the request took longer than KD_IDEMPOTENCY_IN_FLIGHT_SECONDS); nothing was "
                                   "kept, send it again", slug="upload-expired", headers={"Retry-After": "1"})
            row = files_repo.create(session, tenant_id=tenant_id, file_id=file_id, purpose=purpose, format=fmt,
                                    filename=upload.filename, bytes=upload.bytes, sha256=upload.sha256,
                                    storage_key=storage_key, info=info)
            out = FileOut.from_row(row).model_dump(mode="json")
            idempotent.finish(request_fingerprint, 201, out)
            return out

        out = await in_session(request, create)
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled request still cleans up after itself
            if storage_key is not None:
                await run_in_threadpool(store.delete, storage_key)
            if idempotent.claim_id is not None:
                await in_session(request, release)
        raise
    return JSONResponse(out, status_code=201)


@router.get("", response_model=FileList)
def list_files(session: SessionDep, tenant: TenantDep,
               limit: PageLimit = 20,
               after: PageAfter = None,
               purpose: Purpose | None = None,
               sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description=(
                   "only the files with this content (lowercase hex sha256), e.g. to reuse an upload"))] = None,
               ) -> FileList:
    """List files, newest first."""
    rows, has_more = files_repo.list_files(session, tenant_id=tenant.id, limit=limit, after=after,
                                           purpose=purpose.value if purpose else None, sha256=sha256)
    return FileList(data=[FileOut.from_row(r) for r in rows], has_more=has_more)


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FileOut:
    """Retrieve one file's description."""
    return FileOut.from_row(files_repo.get(session, tenant_id=tenant.id, file_id=file_id))


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a byte range"},
                       416: PROBLEM_SCHEMA})
def download_file(file_id: str, request: Request, session: SessionDep, tenant: TenantDep,
                  store: StoreDep) -> StreamingResponse:
    """Download a file's bytes (ETag is the sha256; Range is honoured)."""
    row = files_repo.get(session, tenant_id=tenant.id, file_id=file_id)
    return stored_download(request, store, key=row.storage_key, size=row.bytes, sha256=row.sha256,
                           filename=row.filename)


@router.delete("/{file_id}", status_code=204, responses={409: PROBLEM_SCHEMA})
def delete_file(file_id: str, session: SessionDep, tenant: TenantDep, store: StoreDep) -> Response:
    """Delete a file; refused (409) while a queued or running job uses it."""
    row = files_repo.get(session, tenant_id=tenant.id, file_id=file_id)
    key = row.storage_key
    files_repo.delete(session, tenant_id=tenant.id, file_id=file_id)
    session.commit()
    store.delete(key)
    return Response(status_code=204)
