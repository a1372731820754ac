"""The Alembic migration on fresh databases: creates every table, matches the models, downgrades."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from jobs.db import make_engine
from jobs.migrate import downgrade, upgrade
from jobs.tables import Base

TABLES = {"tenants", "api_keys", "files", "jobs", "job_events", "job_metrics", "artifacts"}


def test_upgrade_matches_models_and_downgrade_removes_everything(empty_database_url):
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES | {"alembic_version"}
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("jobs")}
            assert {"ix_jobs_tenant_created", "ix_jobs_status"} <= indexes
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        upgrade(empty_database_url)  # already at head: a no-op
        downgrade(empty_database_url)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
