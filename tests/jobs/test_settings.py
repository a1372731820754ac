"""Settings: defaults, derived values, and production mode refusing embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.settings import Settings

PG = "postgresql+psycopg://kd:secret@db/kd"
REDIS = "redis://redis:6379/0"


@pytest.fixture(autouse=True)
def no_kd_environment(monkeypatch):
    import os
    for name in [n for n in os.environ if n.startswith("KD_")]:
        monkeypatch.delenv(name)


def test_embedded_defaults(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.mode == "embedded"
    assert s.db_url == f"sqlite:///{tmp_path}/kd.sqlite3"
    assert s.celery_broker_url == f"sqla+sqlite:///{tmp_path}/broker.sqlite3"
    assert s.artifacts_path == tmp_path / "artifacts"
    assert (s.max_upload_bytes, s.lease_seconds, s.max_attempts) == (1024**3, 60, 3)


def test_environment_is_read_with_the_prefix(monkeypatch):
    monkeypatch.setenv("KD_LEASE_SECONDS", "120")
    monkeypatch.setenv("KD_ARTIFACT_DIR", "/srv/artifacts")
    s = Settings()
    assert s.lease_seconds == 120 and s.artifacts_path == Path("/srv/artifacts")


def test_production_accepts_real_servers():
    s = Settings(mode="production", database_url=PG, broker_url=REDIS, bootstrap_api_key="kd_" + "k" * 32)
    assert s.db_url == PG and s.bootstrap_api_key.get_secret_value() == "kd_" + "k" * 32
    assert "k" * 32 not in repr(s)


@pytest.mark.parametrize("key", ["k" * 40, "kd_", "kd_has space", "KD_abc"])
def test_a_bootstrap_key_that_could_never_authenticate_is_refused_at_start_up(key):
    """Issue 15: such a key was accepted, printed with a "Try: curl" line, and answered 401."""
    with pytest.raises(ValueError, match="KD_BOOTSTRAP_API_KEY must look like"):
        Settings(bootstrap_api_key=key)


@pytest.mark.parametrize("overrides, complaint", [
    ({"database_url": None}, "KD_DATABASE_URL is SQLite"),
    ({"database_url": "sqlite:////srv/kd.sqlite3"}, "KD_DATABASE_URL is SQLite"),
    ({"broker_url": None}, "KD_BROKER_URL"),
    ({"broker_url": "memory://"}, "KD_BROKER_URL"),
    ({"bootstrap_api_key": "kd_short"}, "KD_BOOTSTRAP_API_KEY"),
])
def test_production_refuses_embedded_defaults(overrides, complaint):
    values = {"mode": "production", "database_url": PG, "broker_url": REDIS, **overrides}
    with pytest.raises(ValueError, match=complaint):
        Settings(**values)


def test_heartbeat_must_be_shorter_than_the_lease():
    with pytest.raises(ValueError, match="KD_HEARTBEAT_SECONDS"):
        Settings(lease_seconds=5, heartbeat_seconds=5)
