"""idempotency_keys: the Idempotency-Key of each POST /v1/jobs and /v1/files, and its response

Revision ID: 0002_idempotency_keys
Revises: 0001_initial
Create Date: 2025-12-05

Written out in full, like 0001. `response_body` is plain JSON on PostgreSQL (not JSONB) so the
stored response keeps its key order and a replay is the first response byte for byte.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002_idempotency_keys"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BIGSERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", BIGSERIAL, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_idempotency_keys_tenant_id_tenants",
                                ondelete="CASCADE"),
        sa.UniqueConstraint("tenant_id", "key", name="uq_idempotency_keys_tenant_id_key"),
        sa.CheckConstraint("status IN ('in_flight', 'done')", name="ck_idempotency_keys_status"),
        sa.CheckConstraint(
            "status = 'in_flight' OR (response_status IS NOT NULL AND response_body IS NOT NULL)",
            name="ck_idempotency_keys_response"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
