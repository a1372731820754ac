"""The FastAPI application: settings, database, artifact store and broker client wired once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from contextlib import asynccontextmanager

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic_core import from_json
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from swagger_ui_bundle import swagger_ui_path

from api import housekeeping, problems, sse
from api.body_limit import BodyLimitMiddleware
from api.enqueue import Enqueuer
from api.routes import files, health, jobs, ui, webhooks
from jobs import api_keys, reads
from jobs.artifact_store import make_store
from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings
from kdcore.spec_checks import DataInfo, check_student

DESCRIPTION = """Distil a trained classifier (the teacher) into a smaller student, and get back the
evidence: teacher, distilled student and the same student trained from scratch, side by side.
Authenticate with `Authorization: Bearer <key>`. Errors are RFC 9457 problem+json."""


DOCS_ASSETS = "/docs-assets"
API_POOL_SIZE = 15  # database connections per API process (and database slots: api/deps.py)
API_READ_CONNECTIONS = 5  # PostgreSQL: the hot reads' own connections per API process (jobs/reads.py:AsyncReader)


class ProblemModel(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict] | None = None


def warm_up_and_freeze() -> None:
    """Make the objects a process makes at its first submission now, then move every object made so far
    into the garbage collector's permanent generation, so that a full collection no longer walks them.

    The imports are most of what the API tracks: ~300 000 objects at start-up, and a first submission's
    student check added ~125 000 more (its forward pass on the meta device imports torch._dynamo and
    sympy; the first publish's ~9 000, the broker's transport, are left to the collector). Each full
    collection walked them all, about 60-125 ms on this machine with every request of the process
    waiting: /healthz's p99 at 64 connections was 222-258 ms, 23-36 ms with the collector off
    (bench/RESULTS.md, B4 at night). The
    warm-up also takes the first submission's 1-2 s of imports off its client. New objects are
    collected as before; the shutdown unfreezes (`gc.unfreeze`), so a process that builds several apps
    (the tests) does not keep the cycles of the ones it dropped."""
    check_student("mlp", {"hidden_sizes": [2]}, DataInfo((2,), 2, 2), batch_size=2)
    gc.freeze()


def _ensure_bootstrap_key(app: FastAPI, plain_key: str) -> None:
    """KD_BOOTSTRAP_API_KEY for tenant `default`. With KD_API_WORKERS > 1 on a new database every
    process does this at once: the one whose insert of the tenant (or key) loses is told so by the
    unique constraint, and finds the rows on a second look. Without it that process failed its start,
    and uvicorn's supervisor then stopped the whole API (seen starting the B4 and B8 stacks)."""
    for attempt in (1, 2):
        with app.state.sessionmaker() as session:
            try:
                api_keys.ensure_key(session, tenant_name="default", plain_key=plain_key)
                session.commit()
                return
            except IntegrityError:
                session.rollback()
                if attempt == 2:
                    raise


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        from jobs.settings import settings as process_settings

        settings = process_settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.bootstrap_api_key is not None:
            _ensure_bootstrap_key(app, settings.bootstrap_api_key.get_secret_value())
        # what crashed API processes left (upload temp files, stored objects without a row): now and
        # periodically (api/housekeeping.py)
        sweeper = asyncio.create_task(housekeeping.keep_clean(settings, app.state.store))
        warm_up_and_freeze()
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if (executor := getattr(app.state, "read_executor", None)) is not None:
                app.state.read_executor = None
                executor.shutdown(wait=False)
            gc.unfreeze()
            if app.state.async_reader is not None:
                app.state.async_reader.close()
            app.state.engine.dispose()

    # /docs is served with Swagger UI's assets from the app itself (the swagger-ui-bundle package),
    # not from a CDN: it works on a machine without internet. ReDoc has no packaged bundle, so
    # /redoc is not served.
    app = FastAPI(title="Distillation service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    # A fixed pool, no overflow: overflow connections are closed as soon as they are given back, so under
    # load every burst past the pool size opened (and PostgreSQL forked) new connections (B4's profile).
    # On PostgreSQL, JSONB values (a job's spec, progress and result) are parsed by pydantic-core's parser,
    # a third of json.loads's cost (a page of 20 jobs parsed 20 specs: B4's profile of GET /v1/jobs).
    json_options = {"json_deserializer": from_json} if make_url(settings.db_url).get_backend_name() == "postgresql" \
        else {}
    app.state.engine = make_engine(settings.db_url, lock_timeout_ms=settings.db_lock_timeout_ms,
                                   idle_in_transaction_timeout_ms=settings.db_idle_in_transaction_timeout_ms,
                                   pool_size=API_POOL_SIZE, max_overflow=0, **json_options)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    # On PostgreSQL the one-statement reads (GET a job, a page of jobs, the key of a submission or an
    # upload, a stream's poll) go out from the event loop on connections of their own (api/deps.py:read)
    app.state.async_reader = reads.AsyncReader(settings.db_url, API_READ_CONNECTIONS) \
        if make_url(settings.db_url).get_backend_name() == "postgresql" else None
    app.state.store = make_store(settings)  # a directory, or S3 (KD_ARTIFACT_URL)
    app.state.enqueuer = Enqueuer(settings.celery_broker_url)
    app.state.stream_slots = sse.StreamSlots(settings.max_streams_per_tenant)
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware)
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(webhooks.router)
    app.include_router(ui.router)  # the dashboard at /ui (api/routes/ui.py)
    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    original_openapi = app.openapi

    def openapi():
        schema = original_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = ProblemModel.model_json_schema()
        return schema

    app.openapi = openapi
    return app
