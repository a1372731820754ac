"""webhooks and webhook_deliveries: a tenant's endpoints for job events, and the outbox of events to send

Revision ID: 0005_webhooks
Revises: 0004_event_levels
Create Date: 2026-12-04

Written out in full, like the revisions before it. A delivery row is inserted in the transaction that
gives its job a terminal status (jobs/lifecycle.py); the worker's sender claims the due ones through
ix_webhook_deliveries_due.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_webhooks"
down_revision: Union[str, Sequence[str], None] = "0004_event_levels"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSONB = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("previous_secret", sa.String(128), nullable=True),
        ts("previous_secret_expires_at", nullable=True),
        sa.Column("events", JSONB, nullable=False),
        ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_webhooks_tenant_id_tenants",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_webhooks_tenant_created", "webhooks", ["tenant_id", "created_at", "id"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("webhook_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("attempts", JSONB, nullable=False),
        ts("next_attempt_at", nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        ts("created_at"),
        ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], name="fk_webhook_deliveries_webhook_id_webhooks",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_webhook_deliveries_tenant_id_tenants",
                                ondelete="CASCADE"),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="ck_webhook_deliveries_status"),
        sa.CheckConstraint("attempt_count >= 0", name="ck_webhook_deliveries_attempt_count"),
    )
    op.create_index("ix_webhook_deliveries_webhook_created", "webhook_deliveries",
                    ["webhook_id", "created_at", "id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_webhook_created", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhooks_tenant_created", table_name="webhooks")
    op.drop_table("webhooks")
