"""Tenant isolation and authentication, over every route the OpenAPI document lists.

- Another tenant's file or job id answers exactly what an unknown id answers (status, body and
  content type, the id aside) on every route that takes an id, and changes nothing.
- Every /v1 route answers 401 to a missing, malformed, unknown or revoked key.
- The database holds API keys only as hashes (plus the 12-character display prefix).
"""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from jobs import api_keys
from tests.factories import digits_job
from tests.utils import API_KEY, problem, upload

UNKNOWN = {"file_id": "file_" + "0" * 24, "job_id": "job_" + "0" * 24, "webhook_id": "wh_" + "0" * 24,
           "delivery_id": "whd_" + "0" * 24}

# Every route that takes an id, with the query strings each must be tried with. A route added to the
# API with an id in its path fails test_the_id_routes_below_are_all_of_them until it is listed here.
ID_ROUTES = [
    ("GET", "/v1/files/{file_id}", ""),
    ("GET", "/v1/files/{file_id}/content", ""),
    ("DELETE", "/v1/files/{file_id}", ""),
    ("GET", "/v1/jobs/{job_id}", ""),
    ("POST", "/v1/jobs/{job_id}/cancel", ""),
    ("GET", "/v1/jobs/{job_id}/events", ""),
    ("GET", "/v1/jobs/{job_id}/events", "?after=0&limit=5"),
    ("GET", "/v1/jobs/{job_id}/metrics", ""),
    ("GET", "/v1/jobs/{job_id}/student", ""),
    ("GET", "/v1/jobs/{job_id}/student", "?format=safetensors"),
    ("GET", "/v1/jobs/{job_id}/student", "?format=onnx"),
    ("GET", "/v1/jobs/{job_id}/report", ""),
    ("GET", "/v1/webhooks/{webhook_id}", ""),
    ("DELETE", "/v1/webhooks/{webhook_id}", ""),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries", ""),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries", "?limit=5&status=pending"),
    ("POST", "/v1/webhooks/{webhook_id}/test", ""),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret", ""),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", ""),
]
# Routes that take an id in the query: the listing cursor `after`.
CURSOR_ROUTES = [
    ("GET", "/v1/files", "?after={file_id}"),
    ("GET", "/v1/files", "?after={file_id}&limit=1&purpose=teacher"),
    ("GET", "/v1/jobs", "?after={job_id}"),
    ("GET", "/v1/jobs", "?after={job_id}&status=queued"),
]


def _operations(client) -> set[tuple[str, str]]:
    doc = client.get("/openapi.json").json()
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops
            if method in ("get", "post", "put", "patch", "delete")}


def test_the_id_routes_below_are_all_of_them(client):
    with_ids = {(m, p) for m, p in _operations(client) if "{" in p}
    assert with_ids == {(m, p) for m, p, _ in ID_ROUTES}


@pytest.fixture
def owned(client, digits_teacher) -> dict[str, str]:
    """A file, a queued job, a webhook and a delivery (a ping) of the default tenant."""
    file_id = upload(client, digits_teacher[0], "teacher").json()["id"]
    job = client.post("/v1/jobs", json=digits_job(file_id, hyperparameters={"epochs": 1}))
    assert job.status_code == 201, job.text
    hook = client.post("/v1/webhooks", json={"url": "https://hooks.example/kd"})
    assert hook.status_code == 201, hook.text
    ping = client.post(f"/v1/webhooks/{hook.json()['id']}/test")
    assert ping.status_code == 202, ping.text
    return {"file_id": file_id, "job_id": job.json()["id"], "webhook_id": hook.json()["id"],
            "delivery_id": ping.json()["id"], "secret_prefix": hook.json()["secret_prefix"]}


@pytest.mark.parametrize("method, template, query", ID_ROUTES + CURSOR_ROUTES,
                         ids=[f"{m} {p}{q}" for m, p, q in ID_ROUTES + CURSOR_ROUTES])
def test_another_tenants_id_answers_exactly_like_an_unknown_one(client, owned, other_tenant_headers,
                                                               method, template, query):
    url = template + query
    params = [name for name in UNKNOWN if f"{{{name}}}" in url]
    assert all(len(owned[p]) == len(UNKNOWN[p]) for p in params)  # so a length difference cannot leak either
    theirs = client.request(method, url.format(**{p: owned[p] for p in params}), headers=other_tenant_headers)
    unknown = client.request(method, url.format(**{p: UNKNOWN[p] for p in params}), headers=other_tenant_headers)
    assert theirs.status_code == unknown.status_code, (theirs.text, unknown.text)
    assert theirs.status_code == 404
    problem(theirs, 404)
    assert theirs.headers["content-type"] == unknown.headers["content-type"]
    theirs_text, unknown_text = theirs.text, unknown.text
    for p in params:
        theirs_text, unknown_text = theirs_text.replace(owned[p], "{id}"), unknown_text.replace(UNKNOWN[p], "{id}")
    assert theirs_text == unknown_text
    # and nothing happened to the owner's things
    assert client.get(f"/v1/files/{owned['file_id']}").status_code == 200
    assert client.get(f"/v1/jobs/{owned['job_id']}").json()["status"] == "queued"
    assert client.get(f"/v1/files/{owned['file_id']}/content").status_code == 200
    assert client.get(f"/v1/webhooks/{owned['webhook_id']}").json()["secret_prefix"] == owned["secret_prefix"]
    assert [d["id"] for d in client.get(f"/v1/webhooks/{owned['webhook_id']}/deliveries").json()["data"]] == [
        owned["delivery_id"]]


def test_lists_show_only_the_tenants_own(client, owned, other_tenant_headers):
    assert client.get("/v1/files", headers=other_tenant_headers).json()["data"] == []
    assert client.get("/v1/jobs", headers=other_tenant_headers).json()["data"] == []
    for status in ("queued", "cancelled"):
        assert client.get("/v1/jobs", params={"status": status}, headers=other_tenant_headers).json()["data"] == []
    assert client.get("/v1/files", params={"purpose": "teacher"}, headers=other_tenant_headers).json()["data"] == []
    assert client.get("/v1/webhooks", headers=other_tenant_headers).json()["data"] == []


def test_a_job_spec_naming_another_tenants_file_reads_like_an_unknown_file(client, owned, other_tenant_headers,
                                                                          digits_teacher, tmp_path):
    import numpy as np

    mine = upload(client, digits_teacher[0], "teacher", headers=other_tenant_headers).json()["id"]
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 64), np.float32), y=np.arange(20) % 10)
    my_data = upload(client, tmp_path / "d.npz", "dataset", headers=other_tenant_headers).json()["id"]
    for field in ("teacher.file_id", "student.init_file_id", "dataset.train_file_id",
                  "dataset.validation_file_id", "dataset.test_file_id"):
        def body(file_id):
            spec = {"teacher": {"file_id": mine, "arch": "mlp", "arch_params": {"hidden_sizes": [128]}},
                    "dataset": {"train_file_id": my_data} if field.startswith("dataset.") and
                    field != "dataset.train_file_id" else {}}
            head, _, tail = field.partition(".")
            spec.setdefault(head, {})[tail] = file_id
            return spec

        theirs = client.post("/v1/jobs", json=body(owned["file_id"]), headers=other_tenant_headers)
        unknown = client.post("/v1/jobs", json=body(UNKNOWN["file_id"]), headers=other_tenant_headers)
        assert problem(theirs, 422)["errors"][0]["field"] == field, theirs.text
        assert theirs.text.replace(owned["file_id"], "{id}") == unknown.text.replace(UNKNOWN["file_id"], "{id}")
    assert client.get("/v1/jobs", headers=other_tenant_headers).json()["data"] == []


# ---- authentication on every route ----

BAD_AUTH = {
    "missing": None,
    "empty": "",
    "bearer-no-key": "Bearer",
    "bearer-blank": "Bearer    ",
    "basic": "Basic a2Q6c2VjcmV0",
    "basic-with-the-key": f"Basic {API_KEY}",
    "no-scheme": API_KEY,
    "token-scheme": f"Token {API_KEY}",
    "garbage": "\u00ff\u00fe not a header at all",
    "unknown-key": "Bearer kd_" + "A" * 43,
    "not-our-format": "Bearer sk-1234567890",
    "key-with-suffix": f"Bearer {API_KEY}x",
    "key-prefix": f"Bearer {API_KEY[:-1]}",
    "revoked": "revoked",
}


def test_every_v1_route_is_in_the_auth_matrix(client):
    assert {(m, p) for m, p in _operations(client) if p.startswith("/v1")} == set(V1_ROUTES)


V1_ROUTES = [("GET", "/v1/files"), ("POST", "/v1/files"), ("GET", "/v1/files/{file_id}"),
             ("GET", "/v1/files/{file_id}/content"), ("DELETE", "/v1/files/{file_id}"), ("GET", "/v1/jobs"),
             ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"), ("POST", "/v1/jobs/{job_id}/cancel"),
             ("GET", "/v1/jobs/{job_id}/events"), ("GET", "/v1/jobs/{job_id}/metrics"),
             ("GET", "/v1/jobs/{job_id}/student"), ("GET", "/v1/jobs/{job_id}/report"), ("GET", "/v1/webhooks"),
             ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks/{webhook_id}"), ("DELETE", "/v1/webhooks/{webhook_id}"),
             ("GET", "/v1/webhooks/{webhook_id}/deliveries"), ("POST", "/v1/webhooks/{webhook_id}/test"),
             ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"),
             ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")]


@pytest.mark.parametrize("case", list(BAD_AUTH))
def test_every_v1_route_refuses_a_bad_key_with_401(client, owned, revoked_key, case):
    auth = BAD_AUTH[case]
    if auth == "revoked":
        auth = f"Bearer {revoked_key}"
    client.headers.pop("Authorization")
    bodies = set()
    for method, template in V1_ROUTES:
        path = template.format(**owned)  # real ids: a bad key must not reach them either
        kwargs = {}
        if method == "POST" and path == "/v1/jobs":
            kwargs["json"] = {"teacher": {"file_id": owned["file_id"]}}
        elif method == "POST" and path == "/v1/webhooks":
            kwargs["json"] = {"url": "https://hooks.example/other"}
        elif method == "POST" and path == "/v1/files":
            kwargs.update(files={"file": ("a.csv", b"f0,label\n1,0\n")}, data={"purpose": "dataset"})
        headers = {} if auth is None else {"Authorization": auth.encode("latin-1")}
        resp = client.request(method, path, headers=headers, **kwargs)
        body = problem(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer", (method, path)
        bodies.add((body["type"], body["detail"]))
    assert len(bodies) == 1, bodies  # one answer whatever the route: nothing to probe
    client.headers["Authorization"] = f"Bearer {API_KEY}"
    assert client.get(f"/v1/jobs/{owned['job_id']}").json()["status"] == "queued"
    assert client.get(f"/v1/files/{owned['file_id']}").status_code == 200
    assert len(client.get("/v1/webhooks").json()["data"]) == 1
    assert len(client.get("/v1/files").json()["data"]) == 1 and len(client.get("/v1/jobs").json()["data"]) == 1


def test_unknown_and_revoked_keys_read_the_same(client, revoked_key):
    client.headers.pop("Authorization")
    revoked = client.get("/v1/jobs", headers={"Authorization": f"Bearer {revoked_key}"})
    unknown = client.get("/v1/jobs", headers={"Authorization": "Bearer kd_" + "B" * 43})
    assert problem(revoked, 401) == problem(unknown, 401)


# ---- keys at rest ----

def test_the_database_holds_only_key_hashes(client, revoked_key, other_tenant_headers):
    plain_keys = [API_KEY, revoked_key, other_tenant_headers["Authorization"].removeprefix("Bearer ")]
    engine = client.app.state.engine
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM api_keys"))]
        tables = [r[0] for r in conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))]
        everything = {t: [dict(r._mapping) for r in conn.execute(text(f'SELECT * FROM "{t}"'))] for t in tables}
    assert len(rows) == 3
    by_hash = {r["key_hash"]: r for r in rows}
    for key in plain_keys:
        row = by_hash[hashlib.sha256(key.encode()).hexdigest()]
        assert row["prefix"] == key[:api_keys.DISPLAY_PREFIX_LENGTH]
    # No column of any table holds a key, or any prefix of one longer than the display prefix.
    longest_allowed = api_keys.DISPLAY_PREFIX_LENGTH
    for table, table_rows in everything.items():
        for row in table_rows:
            for column, value in row.items():
                for key in plain_keys:
                    assert key[:longest_allowed + 1] not in str(value), (table, column)
