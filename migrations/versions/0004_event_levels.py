"""job_events.level: every event is info, warning or error (existing rows become info)

Revision ID: 0004_event_levels
Revises: 0003_workers
Create Date: 2026-12-05

Written out in full, like the revisions before it. Batch mode on SQLite (env.py) copies the table
to add the check constraint; PostgreSQL alters it in place (the server default fills old rows).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004_event_levels"
down_revision: Union[str, Sequence[str], None] = "0003_workers"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("level", sa.String(16), nullable=False, server_default="info"))
        batch.create_check_constraint("ck_job_events_level", "level IN ('info', 'warning', 'error')")


def downgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.drop_constraint("ck_job_events_level", type_="check")
        batch.drop_column("level")
