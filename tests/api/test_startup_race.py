"""Several API processes starting at once on a new database (KD_API_WORKERS > 1) all ensure the
bootstrap key: the one that loses the race to insert tenant `default` starts anyway."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from jobs import api_keys, tenants_repo


def test_losing_the_race_to_create_the_bootstrap_tenant_is_not_a_failed_start(settings, monkeypatch):
    real = tenants_repo.get_or_create
    raced = []

    def get_or_create(session, *, name):
        if not raced:  # another process inserts the tenant and its key between our look and our insert
            raced.append(1)
            other = create_app(settings)
            with other.state.sessionmaker() as theirs:
                api_keys.ensure_key(theirs, tenant_name=name, plain_key=settings.bootstrap_api_key.get_secret_value())
                theirs.commit()
            other.state.engine.dispose()
            from jobs.tables import Tenant
            tenant = Tenant(name=name)  # what our SELECT-then-INSERT would now insert
            session.add(tenant)
            session.flush()  # IntegrityError: the name is taken
            return tenant
        return real(session, name=name)

    monkeypatch.setattr(tenants_repo, "get_or_create", get_or_create)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {settings.bootstrap_api_key.get_secret_value()}"
        assert client.get("/v1/jobs").status_code == 200
    assert raced
