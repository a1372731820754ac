"""/v1/jobs: submit, list, inspect, cancel, follow and download the student."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from api import quotas
from api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from api.idempotency import IdempotencyKeyDep, IdempotentRequest, fingerprint
from api.problems import PROBLEM_SCHEMA, Problem
from api.schemas.jobs import EventList, EventOut, JobCreate, JobList, JobOut, MetricList, MetricOut, Status
from api.spec_resolution import resolve_spec
from jobs import jobs_repo, lifecycle

log = logging.getLogger("api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={401: PROBLEM_SCHEMA, 404: PROBLEM_SCHEMA})
STUDENT_ARTIFACTS = {"safetensors": ("student_safetensors", "student.safetensors"),
                     "onnx": ("student_onnx", "student.onnx")}


@router.post("", status_code=201, response_model=JobOut,
             responses={409: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA, 429: PROBLEM_SCHEMA})
async def create_job(body: JobCreate, request: Request, session: SessionDep, tenant: TenantDep,
                     store: StoreDep, settings: SettingsDep, key: IdempotencyKeyDep) -> JSONResponse:
    """Submit a distillation job; a spec that cannot run is refused here with 422."""
    tenant_id = tenant.id
    request_fingerprint = fingerprint(request.method, request.url.path, await request.json())
    idempotent = IdempotentRequest(session, settings, tenant_id=tenant_id, key=key)
    idempotent.begin(request_fingerprint)
    if (replay := idempotent.replay(request_fingerprint)) is not None:
        return replay
    with idempotent.released_on_error():
        spec = await run_in_threadpool(resolve_spec, session, tenant_id=tenant_id, body=body, store=store)
        quotas.take_job_slot(session, tenant_id=tenant_id, settings=settings)
        row = jobs_repo.create(session, tenant_id=tenant_id, spec=spec, max_attempts=settings.max_attempts)
        out = JobOut.from_row(row).model_dump(mode="json")
        idempotent.finish(request_fingerprint, 201, out)
        session.commit()  # the row is the truth: commit before the broker can wake a worker
    try:
        request.app.state.enqueuer.enqueue_job(row.id)
        lifecycle.mark_enqueued(session, job_id=row.id)
        session.commit()
    except Exception:  # the reaper enqueues it again after KD_QUEUED_REQUEUE_AFTER
        log.exception("could not enqueue %s; the reaper will retry", row.id)
        session.rollback()
    return JSONResponse(out, status_code=201)


@router.get("", response_model=JobList)
def list_jobs(session: SessionDep, tenant: TenantDep,
              limit: Annotated[int, Query(ge=1, le=100)] = 20,
              after: Annotated[str | None, Query(description="id of the last job of the previous page")] = None,
              status: Status | None = None) -> JobList:
    """List jobs, newest first."""
    rows, has_more = jobs_repo.list_jobs(session, tenant_id=tenant.id, limit=limit, after=after,
                                    status=status.value if status else None)
    return JobList(data=[JobOut.from_row(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """Retrieve one job: status, progress, error and result."""
    return JobOut.from_row(jobs_repo.get(session, tenant_id=tenant.id, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: PROBLEM_SCHEMA})
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """Cancel a job: queued ones at once, running ones at their next step (409 once finished)."""
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    return JobOut.from_row(jobs_repo.get(session, tenant_id=tenant.id, job_id=job_id))


@router.get("/{job_id}/events", response_model=EventList)
def list_events(job_id: str, session: SessionDep, tenant: TenantDep,
                after: Annotated[int, Query(ge=0, description="last event id seen; 0 from the start")] = 0,
                limit: Annotated[int, Query(ge=1, le=999)] = 100) -> EventList:
    """The job's events in order, from after `after`."""
    rows = jobs_repo.events(session, tenant_id=tenant.id, job_id=job_id, after_seq=after, limit=limit + 1)
    return EventList(data=[EventOut.from_row(r) for r in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}/metrics", response_model=MetricList)
def list_metrics(job_id: str, session: SessionDep, tenant: TenantDep) -> MetricList:
    """One row per epoch and run (student, baseline)."""
    rows = jobs_repo.metrics(session, tenant_id=tenant.id, job_id=job_id)
    return MetricList(data=[MetricOut(run=r.run, epoch=r.epoch, values=r.values) for r in rows])


@router.get("/{job_id}/student", response_class=FileResponse, responses={
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a byte range"},
    409: PROBLEM_SCHEMA})
def download_student(job_id: str, session: SessionDep, tenant: TenantDep, store: StoreDep,
                     format: Literal["safetensors", "onnx"] = "safetensors") -> FileResponse:
    """Download the distilled student (ETag is the sha256; Range is honoured)."""
    job = jobs_repo.get(session, tenant_id=tenant.id, job_id=job_id)
    if job.status != "succeeded":
        raise Problem(409, f"the job is {job.status}; the student can be downloaded once it has succeeded",
                      slug="conflict")
    kind, filename = STUDENT_ARTIFACTS[format]
    artifact = next((a for a in jobs_repo.artifacts(session, tenant_id=tenant.id, job_id=job.id)
                     if a.kind == kind), None)
    if artifact is None:
        raise Problem(404, f"this job has no {format} student (the ONNX export may have failed: see its "
                           "events)", slug="not-found")
    return FileResponse(store.local_path(artifact.storage_key), filename=f"{job.id}-{filename}",
                        media_type="application/octet-stream", headers={"ETag": f'"{artifact.sha256}"'})
