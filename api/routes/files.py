"""/v1/files: upload, list, inspect, download and delete teachers, datasets and logits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api import quotas
from api.downloads import stored_download
from api.deps import PageAfter, PageLimit, SessionDep, SettingsDep, StoreDep, TenantDep
from api.file_inspection import inspect_upload
from api.idempotency import IdempotencyKeyDep, IdempotentRequest, fingerprint
from api.problems import PROBLEM_SCHEMA, Problem
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
        }}},
    }
}


@router.post("", status_code=201, response_model=FileOut, openapi_extra=UPLOAD_BODY,
             responses={409: PROBLEM_SCHEMA, 413: PROBLEM_SCHEMA, 415: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA,
                        429: PROBLEM_SCHEMA})
async def upload_file(request: Request, session: SessionDep, tenant: TenantDep, store: StoreDep,
                      settings: SettingsDep, key: IdempotencyKeyDep) -> JSONResponse:
    """Upload a file (multipart: `file`, `purpose`); its content is validated before it is kept."""
    tenant_id = tenant.id
    idempotent = IdempotentRequest(session, settings, tenant_id=tenant_id, key=key)
    idempotent.begin()  # claimed before the body arrives; the fingerprint needs the content's sha256
    with idempotent.released_on_error():
        if not idempotent.replaying:
            quotas.refuse_declared_upload(request, session, tenant_id=tenant_id, settings=settings)
        upload = await receive_upload(request, max_bytes=settings.max_upload_bytes,
                                      tmp_dir=settings.data_dir / "tmp")
        try:
            purpose = upload.fields.get("purpose")
            request_fingerprint = fingerprint(request.method, request.url.path, upload.sha256, purpose,
                                              upload.filename)
            if (replay := idempotent.replay(request_fingerprint)) is not None:
                return replay
            if purpose not in {p.value for p in Purpose}:
                raise Problem(422, f"must be one of {', '.join(p.value for p in Purpose)}", field="purpose")
            quotas.check_stored_bytes(session, tenant_id=tenant_id, settings=settings, adding=upload.bytes)
            fmt, info = await run_in_threadpool(inspect_upload, upload.path, purpose)
            file_id = files_repo.new_file_id()
            storage_key = f"files/{tenant_id}/{file_id}"
            await run_in_threadpool(store.put_file, storage_key, upload.path)
        finally:
            upload.path.unlink(missing_ok=True)
        try:
            quotas.check_stored_bytes(session, tenant_id=tenant_id, settings=settings, adding=upload.bytes,
                                      lock=True)  # again, under the tenant's lock: this one decides
            row = files_repo.create(session, tenant_id=tenant_id, file_id=file_id, purpose=purpose, format=fmt,
                                    filename=upload.filename, bytes=upload.bytes, sha256=upload.sha256,
                                    storage_key=storage_key, info=info)
            out = FileOut.from_row(row).model_dump(mode="json")
            idempotent.finish(request_fingerprint, 201, out)
            session.commit()
        except BaseException:
            store.delete(storage_key)
            raise
    return JSONResponse(out, status_code=201)


@router.get("", response_model=FileList)
def list_files(session: SessionDep, tenant: TenantDep,
               limit: PageLimit = 20,
               after: PageAfter = None,
               purpose: Purpose | None = None) -> FileList:
    """List files, newest first."""
    rows, has_more = files_repo.list_files(session, tenant_id=tenant.id, limit=limit, after=after,
                                     purpose=purpose.value if purpose else None)
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
