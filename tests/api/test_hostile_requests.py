"""Requests any authenticated client can build that used to answer 5xx (issue 16 item 7)."""

from __future__ import annotations

import json

from tests.conftest import problem, upload


def test_a_range_with_thousands_of_digits_is_416_not_500(client, digits_teacher):
    file_id = upload(client, digits_teacher[0], "teacher").json()["id"]
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000, "bytes=0-" + "9" * 5000):
        resp = client.get(f"/v1/files/{file_id}/content", headers={"Range": header})
        problem(resp, 416)


def test_a_lone_surrogate_in_a_spec_key_is_a_readable_422(client, digits_teacher):
    file_id = upload(client, digits_teacher[0], "teacher").json()["id"]
    body = ('{"teacher": {"file_id": "%s", "arch": "mlp", "arch_params": {"hidden_sizes": [128]}}, '
            '"student": {"arch": "mlp", "arch_params": {"\\ud800": 1}}}' % file_id)
    resp = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    err = problem(resp, 422)
    assert "student.arch_params" in err["errors"][0]["field"]
    json.loads(resp.content.decode("ascii"))  # valid JSON, every character escaped
