"""Cursor pagination, newest first, shared by the file and job listings.

The cursor is the id of the last row of the previous page (Stripe's `starting_after`): the next
page holds the rows strictly older in (created_at, id) order, which stays correct while new rows
arrive. A cursor that names no row of this tenant is a NotFound, never silently page one.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select, literal, select, tuple_
from sqlalchemy.orm import Session

from jobs.errors import NotFound
from jobs.tables import could_be_id, UTCDateTime

MAX_PAGE_SIZE = 100

Row = TypeVar("Row")


def newest_first_page(session: Session, stmt: Select, model: type[Row], *, tenant_id: str,
                      after: str | None, limit: int) -> tuple[list[Row], bool]:
    """`stmt` selects `model` rows already filtered by tenant. Returns (rows, has_more)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if after is not None:
        if not could_be_id(after):
            raise NotFound(f"cursor {after!r} names no row to page after")
        cursor = session.execute(
            select(model.created_at, model.id).where(model.id == after, model.tenant_id == tenant_id)
        ).one_or_none()
        if cursor is None:
            raise NotFound(f"cursor {after!r} names no row to page after")
        created_at, row_id = cursor
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(literal(created_at, UTCDateTime()), row_id))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
