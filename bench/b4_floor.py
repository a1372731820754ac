"""B4's floor: what a bare FastAPI app costs under B4's settings (uvicorn with 2 processes, each on
its own IPPROTO_TCP SO_REUSEPORT socket as `python -m api` binds them, wrk with 1 thread, 16 and 64
connections, a fresh PostgreSQL database holding one job row): a hello-world as a sync and as an async route, and one
SQLAlchemy Core select of the job row, in a sync route (a worker thread, a pooled connection with
pre-ping, as the service's engine) and in an async route (SQLAlchemy's asyncio engine on psycopg's
async driver). Requests/s, p99 and the API processes' CPU per request, medians of ROUNDS rounds.

    python -m bench.b4_floor
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys

from bench.b4_api_load import _wrk, api_cpu_seconds
from harness.services import ROOT, Proc, free_port, fresh_database, wait_healthy

ROUTES = ("/hello-sync", "/hello-async", "/select-sync", "/select-async", "/psycopg-sync", "/psycopg-async")
CONNECTIONS = (16, 64)
ROUNDS = 3
POOL = 8  # per process and engine: 2 processes x 2 engines x 8 stay well under PostgreSQL's 100 connections


def create_app():
    """The floor app (uvicorn factory); FLOOR_DB and FLOOR_JOB name the database and the job row."""
    from fastapi import FastAPI
    from sqlalchemy import create_engine, select
    from sqlalchemy.ext.asyncio import create_async_engine

    from jobs.tables import Job

    url, job = os.environ["FLOOR_DB"], os.environ["FLOOR_JOB"]
    app = FastAPI()
    engine = create_engine(url, pool_size=POOL, max_overflow=0, pool_pre_ping=True)
    async_engine = create_async_engine(url, pool_size=POOL, max_overflow=0, pool_pre_ping=True)
    stmt = select(Job.__table__).where(Job.id == job)

    @app.get("/hello-sync")
    def hello_sync():
        return {"status": "ok"}

    @app.get("/hello-async")
    async def hello_async():
        return {"status": "ok"}

    @app.get("/select-sync")
    def select_sync():
        with engine.connect() as conn:
            row = conn.execute(stmt).first()
        return {"id": row.id, "status": row.status}

    @app.get("/select-async")
    async def select_async():
        async with async_engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return {"id": row.id, "status": row.status}

    # The same row by psycopg alone, as jobs/reads.py sends the service's hot reads: its SQL text on a
    # pooled connection in autocommit mode, in a worker thread (sync) or on the event loop (async).
    sql = "SELECT id, status FROM jobs WHERE id = %(id)s"
    raw = url.replace("postgresql+psycopg://", "postgresql://")

    @app.get("/psycopg-sync")
    def psycopg_sync():
        pooled = engine.raw_connection()
        try:
            conn = pooled.driver_connection
            conn.autocommit = True
            row = conn.execute(sql, {"id": job}).fetchone()
            conn.autocommit = False
        finally:
            pooled.close()
        return {"id": row[0], "status": row[1]}

    idle: list = []
    available = asyncio.Semaphore(POOL)

    @app.get("/psycopg-async")
    async def psycopg_async():
        import psycopg

        async with available:
            conn = idle.pop() if idle else await psycopg.AsyncConnection.connect(raw, autocommit=True)
            try:
                row = await (await conn.execute(sql, {"id": job})).fetchone()
            finally:
                idle.append(conn)
        return {"id": row[0], "status": row[1]}

    return app


def _serve(port: int) -> None:
    import uvicorn

    from api.__main__ import LISTEN_BACKLOG, ReusePortSupervisor

    config = uvicorn.Config("bench.b4_floor:create_app", factory=True, host="127.0.0.1", port=port, workers=2,
                            log_level="info", proxy_headers=True,  # the access log on, as the service's
                            backlog=LISTEN_BACKLOG)
    ReusePortSupervisor(config, "127.0.0.1", port).run()


def run() -> dict:
    from jobs import jobs_repo, tenants_repo
    from jobs.db import make_engine, make_sessionmaker

    with fresh_database("kd_bench_floor") as url:
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            tenant = tenants_repo.get_or_create(session, name="floor")
            job = jobs_repo.create(session, tenant_id=tenant.id, spec={"teacher": {"file_id": "file_x"}},
                                   max_attempts=1).id
            session.commit()
        engine.dispose()
        port = free_port()
        env = {**os.environ, "FLOOR_DB": url, "FLOOR_JOB": job, "PYTHONPATH": str(ROOT)}
        proc = Proc([sys.executable, "-m", "bench.b4_floor", "serve", str(port)], env, None, name="the floor app")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, proc, path="/select-sync")
            runs: dict[str, dict[int, list[dict]]] = {r: {n: [] for n in CONNECTIONS} for r in ROUTES}
            for _ in range(ROUNDS):
                for n in CONNECTIONS:
                    for route in ROUTES:
                        cpu = api_cpu_seconds(proc.pid)
                        cell = _wrk(base + route, n)
                        cell["api_cpu_ms"] = 1000 * (api_cpu_seconds(proc.pid) - cpu) / max(cell["requests"], 1)
                        runs[route][n].append(cell)
            return {"rounds": ROUNDS, "results": {
                route: {n: {k: statistics.median(c[k] for c in cells[n]) for k in ("rps", "p99_ms", "api_cpu_ms")}
                        for n in CONNECTIONS} for route, cells in runs.items()}}
        finally:
            proc.stop(sig_timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(int(sys.argv[2]))
    else:
        print(json.dumps(run(), indent=2))
