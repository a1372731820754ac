"""jobs.spec: `hyperparameters.device: auto` pinned to the job's `resources.device` (data only)

Revision ID: 0007_pin_device
Revises: 0006_job_indexes
Create Date: 2026-12-04

Since the API resolves `device: auto` once, at submission (api/spec_resolution.py: the device the
job's queue, `resources.device`, names), a stored spec says `cpu` or `cuda`. Jobs submitted before
that still say `auto`, which the worker used to map the same way on every attempt; this rewrites
them once, so the worker reads every spec as stored. No schema change. The downgrade keeps the
pinned value: it is what `auto` meant for those jobs, and the code before this revision runs it
unchanged.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007_pin_device"
down_revision: Union[str, Sequence[str], None] = "0006_job_indexes"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))


def upgrade() -> None:
    bind = op.get_bind()
    # Read in pages by id, so a large table is never held in memory at once.
    last = ""
    while True:
        rows = bind.execute(sa.select(_jobs.c.id, _jobs.c.spec).where(_jobs.c.id > last)
                            .order_by(_jobs.c.id).limit(500)).all()
        if not rows:
            return
        for job_id, spec in rows:
            hp = spec.get("hyperparameters") if isinstance(spec, dict) else None
            if isinstance(hp, dict) and hp.get("device") == "auto":
                resources = spec.get("resources") if isinstance(spec.get("resources"), dict) else {}
                pinned = {**spec, "hyperparameters": {**hp, "device": resources.get("device") or "cpu"}}
                bind.execute(_jobs.update().where(_jobs.c.id == job_id).values(spec=pinned))
        last = rows[-1][0]


def downgrade() -> None:
    pass  # the pinned device is what `auto` meant for each job (see above)
