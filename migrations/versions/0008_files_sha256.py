"""files: an index for the lookup of a tenant's file by content (GET /v1/files?sha256=)

Revision ID: 0008_files_sha256
Revises: 0007_pin_device
Create Date: 2026-12-04

`kd distill` asks for a file with the sha256 of what it would upload, to reuse it instead of sending it
again; without this index the lookup read every file of the tenant.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0008_files_sha256"
down_revision: Union[str, Sequence[str], None] = "0007_pin_device"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_files_tenant_sha256", "files", ["tenant_id", "sha256"])


def downgrade() -> None:
    op.drop_index("ix_files_tenant_sha256", table_name="files")
