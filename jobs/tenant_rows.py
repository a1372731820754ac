"""One tenant's row by id: the lookup every repository's `get` makes."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import NotFound
from jobs.tables import could_be_id

Row = TypeVar("Row")


def owned(session: Session, model: type[Row], *, tenant_id: str, row_id: str, noun: str,
          fresh: bool = False, lock: bool = False) -> Row:
    """The tenant's `model` row with this id. NotFound ("no {noun} '...'") when there is none, for an id
    of another tenant exactly as for an unknown or malformed one. `fresh` re-reads a row the session
    already holds (a long-lived session, e.g. an SSE loop, then sees changes); `lock` holds the row until
    the transaction ends."""
    if not could_be_id(row_id):
        raise NotFound(f"no {noun} {row_id!r}")
    stmt = select(model).where(model.id == row_id, model.tenant_id == tenant_id)
    if lock:  # FOR UPDATE until the transaction ends (a no-op on SQLite, whose writes are serialised)
        stmt = stmt.with_for_update()
    row = session.scalar(stmt.execution_options(populate_existing=True) if fresh else stmt)
    if row is None:
        raise NotFound(f"no {noun} {row_id!r}")
    return row
