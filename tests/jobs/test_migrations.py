"""The Alembic migrations on fresh databases: create every table, match the models, downgrade step by step."""

from __future__ import annotations

from datetime import timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from jobs.db import make_engine
from jobs.migrate import downgrade, upgrade
from jobs.tables import Base, utcnow

TABLES_0001 = {"tenants", "api_keys", "files", "jobs", "job_events", "job_metrics", "artifacts"}
TABLES_0002 = TABLES_0001 | {"idempotency_keys"}
TABLES_0004 = TABLES_0002 | {"workers"}
TABLES = TABLES_0004 | {"webhooks", "webhook_deliveries"}


def test_upgrade_matches_models_and_downgrade_removes_everything(empty_database_url):
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES | {"alembic_version"}
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("jobs")}
            assert {"ix_jobs_tenant_created", "ix_jobs_tenant_status", "ix_jobs_status_created"} <= indexes
            assert "ix_jobs_status" not in indexes  # 0006: ix_jobs_status_created covers it
            assert "ix_files_tenant_sha256" in {ix["name"] for ix in inspect(conn).get_indexes("files")}  # 0008
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        upgrade(empty_database_url)  # already at head: a no-op
        downgrade(empty_database_url)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_0002_adds_idempotency_keys_and_downgrades_to_0001_keeping_data(empty_database_url):
    upgrade(empty_database_url, "0001_initial")
    engine = make_engine(empty_database_url)
    now = utcnow().replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES_0001 | {"alembic_version"}
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', :now)"),
                         {"now": now})
        upgrade(empty_database_url)
        with engine.begin() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES | {"alembic_version"}
            unique = {tuple(u["column_names"]) for u in inspect(conn).get_unique_constraints("idempotency_keys")}
            assert ("tenant_id", "key") in unique
            conn.execute(text("INSERT INTO idempotency_keys (tenant_id, key, status, created_at, expires_at) "
                              "VALUES ('ten_a', 'k1', 'in_flight', :now, :later)"),
                         {"now": now, "later": now + timedelta(hours=1)})
        downgrade(empty_database_url, "0001_initial")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES_0001 | {"alembic_version"}
            assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["a"]
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001_initial"
        upgrade(empty_database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar() == 0
    finally:
        engine.dispose()


def test_0003_adds_workers_and_downgrades_to_0002(empty_database_url):
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            assert {ix["name"] for ix in inspect(conn).get_indexes("workers")} == {"ix_workers_last_seen"}
        downgrade(empty_database_url, "0002_idempotency_keys")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES_0002 | {"alembic_version"}
    finally:
        engine.dispose()


def test_0004_gives_every_event_a_level_old_ones_info_and_downgrades_to_0003(empty_database_url):
    upgrade(empty_database_url, "0003_workers")
    engine = make_engine(empty_database_url)
    now = utcnow().replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', :now)"), {"now": now})
            conn.execute(text("INSERT INTO jobs (id, tenant_id, status, spec, progress, attempt, max_attempts, "
                              "cancel_requested, created_at, updated_at) VALUES ('job_a', 'ten_a', 'running', "
                              "'{}', '{}', 1, 3, false, :now, :now)"), {"now": now})
            conn.execute(text("INSERT INTO job_events (job_id, seq, attempt, type, message, created_at) "
                              "VALUES ('job_a', 1, 1, 'status', 'old', :now)"), {"now": now})
        upgrade(empty_database_url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT level FROM job_events")).scalars().all() == ["info"]
            conn.execute(text("INSERT INTO job_events (job_id, seq, attempt, type, level, message, created_at) "
                              "VALUES ('job_a', 2, 1, 'warning', 'warning', 'new', :now)"), {"now": now})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO job_events (job_id, seq, attempt, type, level, message, created_at) "
                              "VALUES ('job_a', 3, 1, 'log', 'debug', 'no such level', :now)"), {"now": now})
        downgrade(empty_database_url, "0003_workers")
        with engine.connect() as conn:
            assert "level" not in {c["name"] for c in inspect(conn).get_columns("job_events")}
            assert conn.execute(text("SELECT message FROM job_events ORDER BY seq")).scalars().all() == ["old", "new"]
    finally:
        engine.dispose()


def test_0005_adds_webhooks_and_their_deliveries_and_downgrades_to_0004(empty_database_url):
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    now = utcnow().replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            assert {ix["name"] for ix in inspect(conn).get_indexes("webhook_deliveries")} >= {
                "ix_webhook_deliveries_webhook_created", "ix_webhook_deliveries_due"}
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', :now)"), {"now": now})
            conn.execute(text("INSERT INTO webhooks (id, tenant_id, url, secret, events, created_at) VALUES "
                              "('wh_a', 'ten_a', 'https://x.example/', 'whsec_x', '[\"job.failed\"]', :now)"),
                         {"now": now})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, event_id, event_type, body, "
                              "status, attempt_count, attempts, created_at) VALUES ('whd_a', 'wh_a', 'ten_a', 'evt_a', "
                              "'ping', '{}', 'lost', 0, '[]', :now)"), {"now": now})
        downgrade(empty_database_url, "0004_event_levels")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES_0004 | {"alembic_version"}
            assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["a"]
    finally:
        engine.dispose()


def test_0006_indexes_the_quota_count_and_the_queue_position_and_downgrades_to_0005(empty_database_url):
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            columns = {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("jobs")}
            assert columns["ix_jobs_tenant_status"] == ["tenant_id", "status"]
            assert columns["ix_jobs_status_created"] == ["status", "created_at", "id"]
        downgrade(empty_database_url, "0005_webhooks")
        with engine.connect() as conn:
            names = {ix["name"] for ix in inspect(conn).get_indexes("jobs")}
            assert "ix_jobs_status" in names and not names & {"ix_jobs_tenant_status", "ix_jobs_status_created"}
    finally:
        engine.dispose()
