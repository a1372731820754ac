"""RFC 9457 problem details: every error the API returns, in one place.

    {"type": "urn:kd:problem:invalid-field", "title": "Invalid field", "status": 422,
     "detail": "hyperparameters.alpha: must be between 0 and 1", "instance": "/v1/jobs",
     "errors": [{"field": "hyperparameters.alpha", "reason": "must be between 0 and 1"}]}

Domain errors (jobs.errors, kdcore.errors) are mapped here, so routes only raise. A traceback never
reaches a client: anything unexpected is a 500 with a generic detail, and the log keeps the rest.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.db import is_lock_timeout
from jobs.errors import Conflict, NotFound, TooLarge, TooManyPending
from kdcore.errors import KDError

log = logging.getLogger("api")
MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMA = {
    "description": "RFC 9457 problem details",
    "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


class Problem(Exception):
    """Raise from anywhere in the API to answer with problem+json."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.slug, self.field, self.headers = status, detail, slug, field, headers


def problem_response(request: Request, status: int, detail: str, *, slug: str | None = None,
                     errors: list[dict] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    title = HTTPStatus(status).phrase
    body = {
        "type": f"urn:kd:problem:{slug}" if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = errors
    return _ProblemJSON(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


class _ProblemJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a field name that echoes a client's lone
    surrogate (e.g. a key in `arch_params`) cannot be encoded as UTF-8, and must not turn the 422
    into a 500."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def field_error(request: Request, field: str | None, reason: str, *, status: int = 422,
                slug: str = "invalid-field") -> JSONResponse:
    detail = f"{field}: {reason}" if field else reason
    return problem_response(request, status, detail, slug=slug,
                            errors=[{"field": field, "reason": reason}] if field else None)


def _validation_field(loc: tuple) -> str:
    # ("body", "hyperparameters", "alpha") -> "hyperparameters.alpha"; ("query", "limit") -> "limit"
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header", "form") else list(map(str, loc))
    return ".".join(parts) or str(loc[0])


# Problems that handlers here (and api/uploads.py) produce whatever the route declares.
_MALFORMED_BODY = {"description": "the body cannot be parsed: not UTF-8 JSON, or malformed multipart "
                                  "(RFC 9457 problem details)", "content": PROBLEM_SCHEMA["content"]}


def document_problems(schema: dict) -> dict:
    """Make the OpenAPI document say what the handlers below really answer: FastAPI documents its
    request-validation 422 as `application/json` HTTPValidationError, but `_validation` answers
    problem+json; an operation with a body can be a 400 (a body FastAPI or api/uploads.py cannot
    parse), one that takes multipart/form-data a 413 or 415 (api/uploads.py) too; one that needs a
    key can be a 401. Edits `schema` in place."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, response in list(responses.items()):
                content = response.get("content", {})
                if status.startswith(("4", "5")) and "application/json" in content and MEDIA_TYPE not in content:
                    responses[status] = {"description": response.get("description") or "RFC 9457 problem details",
                                         "content": PROBLEM_SCHEMA["content"]}
            body = operation.get("requestBody", {}).get("content", {})
            if body:
                responses.setdefault("400", _MALFORMED_BODY)
            if "multipart/form-data" in body:
                responses.setdefault("413", PROBLEM_SCHEMA)
                responses.setdefault("415", PROBLEM_SCHEMA)
            if operation.get("security"):
                responses.setdefault("401", PROBLEM_SCHEMA)
    components = schema.get("components", {}).get("schemas", {})
    text = json.dumps(schema.get("paths", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        if name in components and f'"#/components/schemas/{name}"' not in text:
            del components[name]
    return schema


def install(app: FastAPI) -> None:
    fastapi_openapi = app.openapi

    def openapi() -> dict:
        return document_problems(fastapi_openapi())

    app.openapi = openapi

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        if exc.field:
            resp = field_error(request, exc.field, exc.detail, status=exc.status, slug=exc.slug or "invalid-field")
            if exc.headers:
                resp.headers.update(exc.headers)
            return resp
        return problem_response(request, exc.status, exc.detail, slug=exc.slug, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"field": _validation_field(tuple(e["loc"])), "reason": e["msg"].removeprefix("Value error, ")}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        return problem_response(request, 422, detail, slug="invalid-field", errors=errors)

    @app.exception_handler(KDError)
    async def _kd(request: Request, exc: KDError):
        found = getattr(exc, "errors", None)
        if found and len(found) > 1:  # every field that failed (DistillSpec.validate), in spec order
            errors = [{"field": f, "reason": r} for f, r in found]
            detail = "; ".join(f"{f}: {r}" if f else r for f, r in found[:5])
            return problem_response(request, 422, detail, slug="invalid-field", errors=errors)
        return field_error(request, exc.field, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return problem_response(request, 404, exc.message, slug="not-found")

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict):
        return problem_response(request, 409, exc.message, slug="conflict")

    @app.exception_handler(TooLarge)
    async def _too_large(request: Request, exc: TooLarge):
        return problem_response(request, 413, exc.message, slug="too-large")

    @app.exception_handler(TooManyPending)
    async def _too_many_pending(request: Request, exc: TooManyPending):
        return problem_response(request, 429, exc.message, slug="too-many-pending",
                                headers={"Retry-After": str(exc.RETRY_AFTER_SECONDS)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return problem_response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError):
        # A lock wait past KD_DB_LOCK_TIMEOUT_MS in a route's own session (api.deps.in_session maps its
        # steps the same way): the transaction was rolled back, so nothing changed and a retry is safe.
        if is_lock_timeout(exc):
            return problem_response(request, 503, "the database is busy (a lock wait passed KD_DB_LOCK_TIMEOUT_MS); "
                                    "nothing was changed, retry", slug="database-busy", headers={"Retry-After": "1"})
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal error; the server log has the details")
