"""jobs: indexes for the counts of a submission and of a queued job's position

Revision ID: 0006_job_indexes
Revises: 0005_webhooks
Create Date: 2026-12-04

- ix_jobs_tenant_status (tenant_id, status): the quota's count of a tenant's unfinished jobs, taken in
  every POST /v1/jobs under the tenant's row lock (api/quotas.py), read every unfinished job of every
  tenant through ix_jobs_status and filtered them by tenant;
- ix_jobs_status_created (status, created_at, id) replaces ix_jobs_status (status), which it covers: a
  queued job's position (jobs/reads.py) counts the queued jobs created before it, a range of this index
  instead of every queued job; the reaper's scan of queued jobs reads them in this order too.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0006_job_indexes"
down_revision: Union[str, Sequence[str], None] = "0005_webhooks"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant_id", "status"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at", "id"])
    op.drop_index("ix_jobs_status", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_index("ix_jobs_tenant_status", table_name="jobs")
