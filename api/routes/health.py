"""Liveness and readiness probes (no auth: orchestrators call them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable"}})
async def readyz(request: Request) -> JSONResponse:
    """The database, the broker and the artifact store are reachable."""
    checks = {}
    try:
        await run_in_threadpool(_ping_database, request.app.state.engine)
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"unreachable: {type(e).__name__}"
    try:
        await run_in_threadpool(request.app.state.enqueuer.ping)
        checks["broker"] = "ok"
    except Exception as e:
        checks["broker"] = f"unreachable: {type(e).__name__}"
    try:
        await run_in_threadpool(request.app.state.store.ping)
        checks["artifact_store"] = "ok"
    except Exception as e:
        checks["artifact_store"] = f"unreachable: {type(e).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


def _ping_database(engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
