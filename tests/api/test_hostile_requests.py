"""Requests any authenticated client can build that used to answer 5xx (issue 16 item 7)."""

from __future__ import annotations

import json

import pytest

from tests.utils import problem, upload


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


# --- multipart bodies the parser used to mishandle (issue 16 items 7 and 10) ----------------------

CSV = b"a,b,label\n" + b"".join(b"%d.0,%d.5,%d\n" % (i, i, i % 2) for i in range(40))


def _multipart(boundary: bytes, *, closing: bool = True) -> bytes:
    body = (b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
            b"dataset\r\n"
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="file"; filename="d.csv"\r\n'
            b"Content-Type: text/csv\r\n\r\n" + CSV)
    return body + (b"\r\n--" + boundary + b"--\r\n" if closing else b"")


def _post_raw(client, body: bytes, boundary: bytes):
    return client.post("/v1/files", content=body,
                       headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode("ascii")})


def _nothing_kept(client, settings) -> None:
    assert client.get("/v1/files").json()["data"] == []
    root = settings.artifacts_path
    assert not root.exists() or [p for p in root.rglob("*") if p.is_file()] == []
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_the_well_formed_body_these_tests_cut_is_accepted(client):
    resp = _post_raw(client, _multipart(b"b0undary"), b"b0undary")
    assert resp.status_code == 201, resp.text
    assert resp.json()["num_samples"] == 40


def test_a_boundary_over_256_characters_is_a_400_naming_it_and_leaves_no_temp_file(client, settings):
    boundary = b"b" * 300
    err = problem(_post_raw(client, _multipart(boundary), boundary), 400)
    assert "boundary" in err["detail"] and "300" in err["detail"] and "256" in err["detail"]
    _nothing_kept(client, settings)


def test_an_empty_boundary_is_a_400(client, settings):
    resp = client.post("/v1/files", content=b"--\r\n\r\n",
                       headers={"Content-Type": "multipart/form-data; boundary="})
    assert "boundary" in problem(resp, 400)["detail"]
    _nothing_kept(client, settings)


@pytest.mark.parametrize("cut", [
    pytest.param(lambda b: b[: b.rindex(b"\r\n--")], id="in-the-file-data"),
    pytest.param(lambda b: b[: b.rindex(b"--\r\n")], id="before-the-final-dashes"),
    pytest.param(lambda b: b[: b.rindex(b"--\r\n")] + b"\r\n", id="a-new-part-begun"),
    pytest.param(lambda b: b[: b.rindex(b"\r\n--") + 3], id="inside-the-closing-boundary"),
])
def test_a_body_without_its_closing_boundary_is_a_400_and_nothing_is_stored(client, settings, cut):
    body = cut(_multipart(b"b0undary"))
    err = problem(_post_raw(client, body, b"b0undary"), 400)
    assert "closing boundary" in err["detail"], err
    _nothing_kept(client, settings)
