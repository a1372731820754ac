"""Authentication on every /v1 route, the probes, and the OpenAPI document."""

from __future__ import annotations

import pytest

from jobs import api_keys
from tests.utils import API_KEY, problem

ROUTES = [("GET", "/v1/files"), ("POST", "/v1/files"), ("GET", "/v1/files/x"), ("GET", "/v1/files/x/content"),
          ("DELETE", "/v1/files/x"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"),
          ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/jobs/x/events"), ("GET", "/v1/jobs/x/metrics"),
          ("GET", "/v1/jobs/x/student"), ("GET", "/v1/jobs/x/report")]


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer kd_wrong", "Basic dXNlcjpwYXNz"])
def test_every_route_needs_a_valid_key(client, method, path, auth):
    headers = {"Authorization": auth} if auth else {}
    client.headers.pop("Authorization")
    resp = client.request(method, path, headers=headers)
    problem(resp, 401)
    assert resp.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(client, revoked_key):
    problem(client.get("/v1/jobs", headers={"Authorization": f"Bearer {revoked_key}"}), 401)


def test_bootstrap_key_belongs_to_tenant_default(client):
    with client.app.state.sessionmaker() as session:
        assert api_keys.authenticate(session, plain_key=API_KEY).name == "default"


def test_probes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "artifact_store": "ok"}


def test_readyz_reports_an_unreachable_broker(settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    bad = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(bad)) as c:
        resp = c.get("/readyz")
    assert resp.status_code == 503 and resp.json()["checks"]["broker"].startswith("unreachable")


def test_openapi_documents_the_routes_and_problems(client):
    doc = client.get("/openapi.json").json()
    assert {"/v1/files", "/v1/jobs", "/v1/jobs/{job_id}/student", "/healthz", "/readyz"} <= set(doc["paths"])
    assert "Problem" in doc["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_json_bodies_are_capped_with_and_without_content_length(client):
    from api.body_limit import MAX_JSON_BODY_BYTES

    big = b'{"teacher": {"file_id": "' + b"x" * (MAX_JSON_BODY_BYTES + 10) + b'"}}'
    resp = client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert problem(resp, 413)["type"] == "urn:kd:problem:too-large"

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    resp = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    problem(resp, 413)
    assert client.get("/v1/jobs").json()["data"] == []
