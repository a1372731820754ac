"""/v1/jobs: submit, list, inspect, cancel, follow and download the student."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from api import job_json, quotas, sse
from api.downloads import stored_download
from api.deps import (BEARER_SECURITY, BriefTenantDep, KeyDep, PageAfter, PageLimit, SessionDep, StoreDep,
                      TenantDep, bearer, in_session, key_from_header, read, unknown_key)
from api.idempotency import IdempotencyKeyDep, IdempotentRequest, fingerprint
from api.problems import PROBLEM_SCHEMA, Problem
from api.schemas.examples import JOB_EXAMPLES
from api.schemas.jobs import EventList, EventOut, JobCreate, JobList, JobOut, MetricList, MetricOut, Status
from api.spec_resolution import check_files_still_exist, resolve_spec
from jobs import files_repo, jobs_repo, lifecycle, reads
from jobs.artifact_store import ArtifactStore
from jobs.errors import NotFound
from jobs.routing import queue_for
from jobs.spec_files import named_files
from jobs.settings import Settings

log = logging.getLogger("api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={401: PROBLEM_SCHEMA, 404: PROBLEM_SCHEMA})
MAX_EVENT_ID = 2**31 - 1  # job_events.seq is a PostgreSQL integer: a larger `after` is a 422, not a 500
STUDENT_ARTIFACTS = {"safetensors": ("student_safetensors", "student.safetensors"),
                     "onnx": ("student_onnx", "student.onnx")}


@router.post("", status_code=201, response_model=JobOut,
             responses={409: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA, 429: PROBLEM_SCHEMA})
async def create_job(body: Annotated[JobCreate, Body(openapi_examples=JOB_EXAMPLES)], request: Request,
                     tenant: BriefTenantDep,
                     key: IdempotencyKeyDep) -> Response:
    """Submit a distillation job; a spec that cannot run is refused here with 422."""
    # the fingerprint is for the Idempotency-Key only (a second parse of the body and a sha256 otherwise spent)
    request_fingerprint = None if key is None else fingerprint(request.method, request.url.path, await request.json())
    # Async only to read the raw body; every call below blocks (database, broker), so they run in one
    # worker thread with a session of their own (api/deps.py:in_session). On the event loop, a wait for a
    # pooled connection would stop every request, including those holding the connections it waits
    # for: a deadlock until the pool's timeout. Two thread hops in all (the key, then this), where a
    # session, the key and the route as dependencies took four (bench/RESULTS.md, B4).
    state = request.app.state
    return await in_session(request, _create_job, request, tenant.id, body, state.store, state.settings, key,
                            request_fingerprint)


def _create_job(session: Session, request: Request, tenant_id: str, body: JobCreate, store: ArtifactStore,
                settings: Settings, key: str | None, request_fingerprint: str | None) -> Response:
    idempotent = IdempotentRequest(session, settings, tenant_id=tenant_id, key=key)
    idempotent.begin(request_fingerprint)
    if (replay := idempotent.replay(request_fingerprint)) is not None:
        return replay
    with idempotent.released_on_error():
        spec = resolve_spec(session, tenant_id=tenant_id, body=body, store=store)
        existing = quotas.take_job_slot(session, tenant_id=tenant_id, settings=settings,  # locks the tenant
                                        file_ids=[file_id for _, file_id in named_files(spec)])
        # the spec's files as found under that lock, which DELETE /v1/files/{id} takes too: a file deleted
        # since resolve_spec read it is a 422 here, and a delete after this commit sees the job (409)
        check_files_still_exist(spec, existing)
        row = jobs_repo.create(session, tenant_id=tenant_id, spec=spec, max_attempts=settings.max_attempts)
        # with an Idempotency-Key the response is stored with the row; without one it is made after the
        # commit, outside the tenant's lock
        stored = None
        if idempotent.claimed:
            stored = JobOut.from_row(row).model_dump(mode="json")
            idempotent.finish(request_fingerprint, 201, stored)
        session.commit()  # the row is the truth: commit before the broker can wake a worker
    # No second transaction to record the send (lifecycle.mark_enqueued): the reaper counts a job never
    # marked from its created_at, a few milliseconds before this send, so the mark changed nothing it
    # decides, and it cost a pooled checkout, an UPDATE and a commit per submission (bench/RESULTS.md, B4).
    try:
        request.app.state.enqueuer.enqueue_job(row.id, queue_for(row.spec))
    except Exception:  # the reaper enqueues it again KD_QUEUED_REQUEUE_AFTER after its created_at
        log.exception("could not enqueue %s; the reaper will retry", row.id)
    if stored is not None:
        return JSONResponse(stored, status_code=201)
    return Response(JobOut.from_row(row).model_dump_json(), status_code=201, media_type="application/json")


@router.get("", response_model=JobList, openapi_extra=BEARER_SECURITY)
async def list_jobs(request: Request, key: KeyDep,
                    limit: PageLimit = 20,
                    after: PageAfter = None,
                    status: Status | None = None) -> Response:
    """List jobs, newest first; a queued job with why it waits (its queue position: GET /v1/jobs/{id})."""
    page = await read(request, reads.jobs_for_key, key_hash=reads.key_hash(key), limit=limit, after=after,
                      status=status.value if status else None,
                      stale_seconds=request.app.state.settings.worker_stale_seconds)
    if page.tenant_id is None:
        raise unknown_key()
    if not page.cursor_found:
        raise NotFound(f"cursor {after!r} names no row to page after")
    return Response(job_json.page_json(page.jobs, page.has_more, page.live_queues), media_type="application/json")


@router.get("/{job_id}", response_model=JobOut, openapi_extra=BEARER_SECURITY)
async def get_job(job_id: str, request: Request) -> Response:
    """Retrieve one job: status, progress, error and result; while queued, its queue position and why it waits."""
    # One statement checks the key and reads the job, its queue position and the live workers' queues
    # (jobs/reads.py); no session and no dependency to solve (bench/RESULTS.md, B4).
    found = await read(request, reads.job_for_key, key_hash=reads.key_hash(key_from_header(request)),
                       job_id=job_id, stale_seconds=request.app.state.settings.worker_stale_seconds)
    if found.tenant_id is None:
        raise unknown_key()
    if found.job is None:
        raise NotFound(f"no job {job_id!r}")
    # the JSON kept for this row, as a page's (api/job_json.py), with a queued job's position and reason
    return Response(job_json.job_json(found.job, found.live_queues or frozenset(), found.queue_position),
                    media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: PROBLEM_SCHEMA})
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """Cancel a job: queued ones at once, running ones at their next step (409 once finished)."""
    lifecycle.request_cancel(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    return JobOut.from_row(jobs_repo.get(session, tenant_id=tenant.id, job_id=job_id))


@router.get("/{job_id}/events", response_model=EventList, responses={
    200: {"description": "a page of events (application/json), or with `Accept: text/event-stream` a live "
                         "stream of them: `id: <seq>`, `event: <type>`, `data: <EventOut JSON>`, a blank line; "
                         "`: keep-alive` comments every 15 s; the stream ends once the job has finished",
          "content": {sse.MEDIA_TYPE: {"schema": {"type": "string"}}}},
    422: PROBLEM_SCHEMA})
async def list_events(job_id: str, request: Request, tenant: BriefTenantDep,
                      credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                      after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID,
                                                  description="last event id seen; 0 from the start")] = 0,
                      limit: Annotated[int, Query(ge=1, le=999, description="page size (JSON only)")] = 100,
                      accept: Annotated[str | None, Header(include_in_schema=False)] = None,
                      last_event_id: Annotated[str | None, Header(
                          alias="Last-Event-ID",
                          description="SSE only: resume after this event id (wins over `after`)")] = None):
    """The job's events in order, from after `after`: a JSON page, or a live SSE stream when the
    request accepts text/event-stream. Neither holds a database connection between its queries."""
    tenant_id = tenant.id
    if not sse.wants_stream(accept):
        rows = await in_session(request, lambda s: jobs_repo.events(s, tenant_id=tenant_id, job_id=job_id,
                                                                    after_seq=after, limit=limit + 1))
        return EventList(data=[EventOut.from_row(r) for r in rows[:limit]], has_more=len(rows) > limit)
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        after = int(text) if text.isdigit() and len(text) <= 10 else -1
        if not 0 <= after <= MAX_EVENT_ID:
            raise Problem(422, f"must be an event id, an integer from 0 to {MAX_EVENT_ID}", field="Last-Event-ID")
    await in_session(request, lambda s: jobs_repo.get(s, tenant_id=tenant_id, job_id=job_id))  # 404 first
    release = request.app.state.stream_slots.reserve(tenant_id)  # 429 past KD_MAX_STREAMS_PER_TENANT
    try:
        stream = sse.event_stream(lambda fn, **kwargs: read(request, fn, **kwargs), tenant_id=tenant_id,
                                  job_id=job_id, after_seq=after, plain_key=credentials.credentials)
        return sse.CountedStreamingResponse(stream, release=release, media_type=sse.MEDIA_TYPE,
                                            headers=sse.HEADERS)
    except BaseException:
        release()
        raise


# The CSV's columns after run and epoch, in the trainer's order (kdcore.trainer.EpochMetrics); a value
# key not listed here (a newer worker's) follows them, sorted by name.
METRIC_CSV_COLUMNS = ("epochs", "train_loss", "train_hard", "train_soft", "train_accuracy", "val_accuracy",
                      "val_agreement", "lr", "seconds", "point")


@router.get("/{job_id}/metrics", response_model=MetricList, responses={
    200: {"description": "the rows as JSON, or with `format=csv` as CSV: a header row (run, epoch, then the "
                         "values' names), one row per (run, epoch); an empty cell is a value the epoch does not have",
          "content": {"text/csv": {"schema": {"type": "string"}}}},
    422: PROBLEM_SCHEMA})
def list_metrics(job_id: str, session: SessionDep, tenant: TenantDep,
                 format: Annotated[Literal["json", "csv"], Query(
                     description="json (default) or csv, one row per (run, epoch) with a header row")] = "json"):
    """One row per epoch and run (student, baseline), as JSON or CSV."""
    rows = jobs_repo.metrics(session, tenant_id=tenant.id, job_id=job_id)
    if format == "csv":
        return Response(_metrics_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}-metrics.csv"'})
    return MetricList(data=[MetricOut(run=r.run, epoch=r.epoch, values=r.values) for r in rows])


def _metrics_csv(rows) -> str:
    """Metric rows as CSV (RFC 4180, CRLF line ends): run, epoch, then every value column; None is an
    empty cell, a nested value compact JSON."""
    import csv
    import io
    import json

    def cell(value):
        if value is None:
            return ""
        return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else value

    seen = {key for r in rows for key in (r.values or {}) if key not in ("run", "epoch")}
    columns = [c for c in METRIC_CSV_COLUMNS if c in seen or not rows] + sorted(seen - set(METRIC_CSV_COLUMNS))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "epoch", *columns])
    for r in rows:
        writer.writerow([r.run, r.epoch, *(cell((r.values or {}).get(c)) for c in columns)])
    return out.getvalue()


@router.get("/{job_id}/student", response_class=StreamingResponse, responses={
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "a byte range"},
    409: PROBLEM_SCHEMA, 416: PROBLEM_SCHEMA})
def download_student(job_id: str, request: Request, session: SessionDep, tenant: TenantDep, store: StoreDep,
                     format: Literal["safetensors", "onnx"] = "safetensors") -> StreamingResponse:
    """Download the distilled student (ETag is the sha256; Range is honoured)."""
    job = jobs_repo.get(session, tenant_id=tenant.id, job_id=job_id)
    if job.status != "succeeded":
        raise Problem(409, f"the job is {job.status}; the student can be downloaded once it has succeeded",
                      slug="conflict")
    kind, filename = STUDENT_ARTIFACTS[format]
    try:
        artifact = jobs_repo.get_artifact(session, tenant_id=tenant.id, job_id=job.id, kind=kind)
    except NotFound:
        raise Problem(404, f"this job has no {format} student (the ONNX export may have failed: see its "
                           "events)", slug="not-found") from None
    return stored_download(request, store, key=artifact.storage_key, size=artifact.bytes, sha256=artifact.sha256,
                           filename=f"{job.id}-{filename}")


@router.get("/{job_id}/report", response_class=HTMLResponse, responses={
    200: {"description": "a self-contained HTML page: plots, model table, verdict", "content": {"text/html": {}}},
    409: PROBLEM_SCHEMA})
def job_report(job_id: str, session: SessionDep, tenant: TenantDep) -> HTMLResponse:
    """A self-contained HTML report of a succeeded job (409 before it has succeeded)."""
    from api.report import render_report  # matplotlib is loaded on the first report only

    row = jobs_repo.get(session, tenant_id=tenant.id, job_id=job_id)
    if row.status != "succeeded":
        raise Problem(409, f"the job is {row.status}; its report is ready once it has succeeded", slug="conflict")
    job = JobOut.from_row(row).model_dump(mode="json")
    teacher_file = (job["spec"].get("teacher") or {}).get("file_id")
    if teacher_file:
        try:
            job["teacher_file_bytes"] = files_repo.get(session, tenant_id=tenant.id, file_id=teacher_file).bytes
        except NotFound:  # deleted since: the size is unknown
            pass
    metrics = [{"run": m.run, "epoch": m.epoch, "values": m.values}
               for m in jobs_repo.metrics(session, tenant_id=tenant.id, job_id=job_id)]
    session.rollback()
    return HTMLResponse(render_report(job, metrics))
