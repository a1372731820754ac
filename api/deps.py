"""Dependencies every route declares through short `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.problems import Problem
from jobs import api_keys
from jobs.artifact_store import ArtifactStore
from jobs.settings import Settings
from jobs.tables import Tenant

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer kd_...`")


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit once at the boundary, anything else rolls back."""
    with request.app.state.sessionmaker() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def current_tenant(session: SessionDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Tenant:
    """The tenant that owns the presented key; 401 for a missing, malformed, unknown or revoked key."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "an API key is required: Authorization: Bearer <key>", slug="unauthorized",
                      headers=challenge)
    tenant = api_keys.authenticate(session, plain_key=credentials.credentials)
    if tenant is None:
        raise Problem(401, "the API key is unknown or revoked", slug="unauthorized", headers=challenge)
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


# The cursor pagination of the list routes: newest first, `after` = id of the last row of the previous page.
PageLimit = Annotated[int, Query(ge=1, le=100, description="rows per page (1-100)")]
PageAfter = Annotated[str | None, Query(description="id of the last row of the previous page")]
