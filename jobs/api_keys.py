"""API keys: "kd_" + 43 url-safe characters (256 random bits), stored only as their sha256.

A key is shown once, when created; the table keeps its hash (to authenticate) and its first 12
characters (to tell keys apart in `list-keys` and to revoke one). A hash lookup needs no
constant-time comparison: the secret is never compared, only its digest looked up by index.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from jobs import tenants_repo
from jobs.errors import Conflict, NotFound
from jobs.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "kd_"
DISPLAY_PREFIX_LENGTH = 12


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plain_key: str) -> str:
    return hashlib.sha256(plain_key.encode("utf-8")).hexdigest()


def _add_key(session: Session, *, tenant: Tenant, plain_key: str) -> ApiKey:
    key = ApiKey(tenant_id=tenant.id, key_hash=hash_key(plain_key), prefix=plain_key[:DISPLAY_PREFIX_LENGTH])
    session.add(key)
    session.flush()
    return key


def create_key(session: Session, *, tenant_name: str) -> tuple[str, ApiKey]:
    """A new key for `tenant_name` (created if needed). The plain key is returned once, never stored."""
    plain_key = generate_key()
    tenant = tenants_repo.get_or_create(session, name=tenant_name)
    return plain_key, _add_key(session, tenant=tenant, plain_key=plain_key)


def ensure_key(session: Session, *, tenant_name: str, plain_key: str) -> ApiKey:
    """Make `plain_key` (KD_BOOTSTRAP_API_KEY) a key of `tenant_name`; a no-op when it already is.
    A bootstrap key that was revoked stays revoked: restarting must not undo a revocation.
    Conflict if the key belongs to another tenant."""
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plain_key)))
    tenant = tenants_repo.get_or_create(session, name=tenant_name)
    if existing is not None:
        if existing.tenant_id != tenant.id:
            raise Conflict(f"this key already belongs to another tenant, not {tenant_name!r}")
        return existing
    return _add_key(session, tenant=tenant, plain_key=plain_key)


def authenticate(session: Session, *, plain_key: str) -> Tenant | None:
    """The tenant owning this key, or None (unknown or revoked key)."""
    if not plain_key.startswith(KEY_PREFIX):
        return None
    return session.scalar(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(plain_key), ApiKey.revoked_at.is_(None))
    )


def revoke_key(session: Session, *, prefix_or_id: str) -> ApiKey:
    """Revoke the key whose id or display prefix is given (revoking twice is a no-op).
    NotFound if none matches, Conflict if a prefix matches more than one key."""
    keys = list(session.scalars(
        select(ApiKey).where(or_(ApiKey.id == prefix_or_id, ApiKey.prefix == prefix_or_id)).limit(2)))
    if not keys:
        raise NotFound(f"no API key with id or prefix {prefix_or_id!r}")
    if len(keys) > 1:
        raise Conflict(f"prefix {prefix_or_id!r} matches several keys; revoke by id")
    key = keys[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    """Every key with its tenant, oldest first (for the operator's `list-keys`)."""
    rows = session.execute(
        select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id)
        .order_by(ApiKey.created_at, ApiKey.id))
    return [(key, tenant) for key, tenant in rows]
