"""Tenants: the owners of keys, files and jobs. Created on demand by the key commands."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import NotFound
from jobs.tables import Tenant


def get_by_name(session: Session, *, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}")
    return tenant


def get_or_create(session: Session, *, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        if not name.strip():
            raise ValueError("a tenant name must not be empty")
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant
