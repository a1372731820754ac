"""API keys on both databases: only hashes stored, revocation, bootstrap idempotence, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from jobs import admin, api_keys
from jobs.errors import Conflict, NotFound
from jobs.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_keys_are_stored_only_as_hashes(session):
    plain, key = api_keys.create_key(session, tenant_name="acme")
    session.commit()
    assert plain.startswith("kd_") and len(plain) >= 40
    assert key.key_hash == api_keys.hash_key(plain) and key.prefix == plain[:12]
    raw = session.execute(text("SELECT * FROM api_keys")).all()
    dump = repr(raw) + repr(session.execute(text("SELECT * FROM tenants")).all())
    assert plain not in dump and plain[12:] not in dump


def test_authenticate_and_revoke(session):
    plain, key = api_keys.create_key(session, tenant_name="acme")
    other_plain, _ = api_keys.create_key(session, tenant_name="acme")
    session.commit()
    assert api_keys.authenticate(session, plain_key=plain).name == "acme"
    assert api_keys.authenticate(session, plain_key="kd_" + "x" * 43) is None
    assert api_keys.authenticate(session, plain_key="") is None
    revoked = api_keys.revoke_key(session, prefix_or_id=key.prefix)
    session.commit()
    assert revoked.id == key.id and revoked.revoked_at is not None
    assert api_keys.authenticate(session, plain_key=plain) is None
    assert api_keys.authenticate(session, plain_key=other_plain) is not None  # the tenant's other key
    assert api_keys.revoke_key(session, prefix_or_id=key.id).revoked_at == revoked.revoked_at  # idempotent
    with pytest.raises(NotFound):
        api_keys.revoke_key(session, prefix_or_id="kd_nosuchkey")


def test_ensure_key_is_idempotent(session):
    bootstrap = "kd_" + "b" * 40
    first = api_keys.ensure_key(session, tenant_name="default", plain_key=bootstrap)
    session.commit()
    second = api_keys.ensure_key(session, tenant_name="default", plain_key=bootstrap)
    session.commit()
    assert first.id == second.id
    assert [t.name for _, t in api_keys.list_keys(session)] == ["default"]
    assert api_keys.authenticate(session, plain_key=bootstrap).name == "default"
    with pytest.raises(Conflict):
        api_keys.ensure_key(session, tenant_name="someone-else", plain_key=bootstrap)


def test_admin_create_key_prints_a_key_that_authenticates(engine, session):
    env = {**os.environ, "KD_DATABASE_URL": engine.url.render_as_string(hide_password=False), "KD_MODE": "embedded"}
    done = subprocess.run([sys.executable, "-m", "jobs.admin", "create-key", "--tenant", "cli-tenant"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    plain = done.stdout.strip()
    assert done.stdout == plain + "\n"  # the key alone on stdout
    assert api_keys.authenticate(session, plain_key=plain).name == "cli-tenant"


def test_admin_list_and_revoke_keys(engine, session, monkeypatch, capsys):
    monkeypatch.setattr(admin, "settings", Settings(database_url=engine.url.render_as_string(hide_password=False)))
    plain, key = api_keys.create_key(session, tenant_name="acme")
    session.commit()
    assert admin.main(["list-keys"]) == 0
    listed = capsys.readouterr().out
    assert f"{key.id}\t{key.prefix}\tacme\t" in listed and listed.rstrip().endswith("active")
    assert plain not in listed
    assert admin.main(["revoke-key", key.prefix]) == 0
    assert api_keys.authenticate(session, plain_key=plain) is None
    assert admin.main(["revoke-key", "kd_unknown"]) == 1
    assert "no API key" in capsys.readouterr().err
