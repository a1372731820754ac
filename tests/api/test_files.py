"""/v1/files: upload with content validation and a size cap; list, get, download, delete."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np

from tests.utils import problem, upload


def _stored_files(settings) -> list:
    root = settings.artifacts_path
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_teacher_describes_it(client, digits_teacher):
    path, _ = digits_teacher
    resp = upload(client, path, "teacher")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"].startswith("file_")
    assert body["purpose"] == "teacher" and body["format"] == "safetensors" and body["kind"] == "state_dict"
    assert body["bytes"] == path.stat().st_size
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["num_classes"] == 10
    assert body["parameters"] == 64 * 128 + 128 + 128 * 10 + 10
    assert client.get(f"/v1/files/{body['id']}").json() == body


def test_upload_dataset_reports_shape_and_classes(client, tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.rand(30, 5).astype(np.float32), y=np.arange(30) % 3)
    body = upload(client, path, "dataset").json()
    assert body["format"] == "npz"
    assert (body["num_samples"], body["input_shape"], body["num_classes"]) == (30, [5], 3)
    assert body["label_histogram"] == [10, 10, 10]


def test_invalid_content_is_422_and_nothing_is_kept(client, settings, tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    body = problem(upload(client, bad, "teacher"), 422)
    assert body["errors"][0]["field"] == "file"
    assert "pickle" in body["detail"].lower()
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.array([[1.0, np.nan]], dtype=np.float32), y=np.array([0]))
    problem(upload(client, nan, "dataset"), 422)
    assert client.get("/v1/files").json()["data"] == []
    assert _stored_files(settings) == []
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_a_dataset_without_features_is_a_422_and_nothing_is_kept(client, settings, tmp_path):
    """x of shape (N, 0) (or any 0 after N): rows with nothing in them; accepted before (issue 16 item 10)."""
    for x_shape in ((20, 0), (20, 4, 0)):
        path = tmp_path / "no_features.npz"
        np.savez(path, x=np.zeros(x_shape, np.float32), y=np.arange(20) % 2)
        err = problem(upload(client, path, "dataset"), 422)
        assert err["errors"][0]["field"] == "file" and "0 features" in err["detail"], err
        assert str(list(x_shape)) in err["detail"]
    assert client.get("/v1/files").json()["data"] == []
    assert _stored_files(settings) == []
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_wrong_purpose_for_content_is_422(client, tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.rand(4, 2).astype(np.float32), y=np.array([0, 1, 0, 1]))
    body = problem(upload(client, path, "teacher"), 422)
    assert body["errors"][0]["field"] == "file"
    body = problem(upload(client, path, "weights"), 422)
    assert body["errors"][0]["field"] == "purpose"


def test_upload_over_the_cap_is_413_and_nothing_is_kept(client, settings, tmp_path):
    big = tmp_path / "big.npz"
    big.write_bytes(b"\0" * (settings.max_upload_bytes + 1))
    problem(upload(client, big, "dataset"), 413)

    def chunks():  # no Content-Length: the cap must hold on the streamed body too
        boundary = b"XyZ"
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n"
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npz\"\r\n\r\n"
        for _ in range(settings.max_upload_bytes // 65536 + 2):
            yield b"\1" * 65536
        yield b"\r\n--" + boundary + b"--\r\n"

    resp = client.post("/v1/files", content=chunks(),
                       headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    problem(resp, 413)
    assert _stored_files(settings) == []


def test_download_has_etag_and_honours_range(client, digits_teacher):
    path, _ = digits_teacher
    body = upload(client, path, "teacher").json()
    full = client.get(f"/v1/files/{body['id']}/content")
    assert full.status_code == 200 and full.content == path.read_bytes()
    assert full.headers["etag"] == f'"{body["sha256"]}"'
    part = client.get(f"/v1/files/{body['id']}/content", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == path.read_bytes()[10:20]


def test_list_paginates_newest_first(client, tmp_path):
    ids = []
    for i in range(5):
        p = tmp_path / f"d{i}.npz"
        np.savez(p, x=np.random.rand(4, 2).astype(np.float32), y=np.array([0, 1, 0, 1]))
        ids.append(upload(client, p, "dataset").json()["id"])
    page1 = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in page1["data"]] == ids[::-1][:2] and page1["has_more"]
    seen, after = [], None
    while True:
        page = client.get("/v1/files", params={"limit": 2, **({"after": after} if after else {})}).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == ids[::-1]


def test_list_filters_by_sha256(client, tmp_path, other_tenant_headers):
    """`sha256=` finds an earlier upload of the same content (what `kd distill` reuses); a value that is
    not a lowercase hex sha256 is a 422 naming it; another tenant's copy is not listed."""
    paths = []
    for i in range(2):
        p = tmp_path / f"d{i}.npz"
        np.savez(p, x=np.full((4, 2), i, dtype=np.float32), y=np.array([0, 1, 0, 1]))
        paths.append(p)
    first = upload(client, paths[0], "dataset").json()
    upload(client, paths[1], "dataset")
    again = upload(client, paths[0], "dataset").json()
    upload(client, paths[0], "dataset", headers=other_tenant_headers)
    found = client.get("/v1/files", params={"sha256": first["sha256"]}).json()
    assert [f["id"] for f in found["data"]] == [again["id"], first["id"]] and not found["has_more"]
    assert client.get("/v1/files", params={"sha256": first["sha256"], "purpose": "teacher"}).json()["data"] == []
    assert client.get("/v1/files", params={"sha256": "0" * 64}).json()["data"] == []
    body = problem(client.get("/v1/files", params={"sha256": first["sha256"].upper()}), 422)
    assert "sha256" in str(body)


def test_delete_removes_row_and_bytes(client, settings, digits_teacher):
    body = upload(client, digits_teacher[0], "teacher").json()
    assert len(_stored_files(settings)) == 1
    assert client.delete(f"/v1/files/{body['id']}").status_code == 204
    problem(client.get(f"/v1/files/{body['id']}"), 404)
    assert _stored_files(settings) == []


def test_other_tenants_file_is_the_same_404_as_an_unknown_one(client, other_tenant_headers, digits_teacher):
    body = upload(client, digits_teacher[0], "teacher").json()
    for method, suffix in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        theirs = client.request(method, f"/v1/files/{body['id']}{suffix}", headers=other_tenant_headers)
        unknown = client.request(method, f"/v1/files/file_unknown{suffix}", headers=other_tenant_headers)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["detail"].replace(body["id"], "X") == unknown.json()["detail"].replace("file_unknown", "X")
    assert client.get(f"/v1/files/{body['id']}").status_code == 200
