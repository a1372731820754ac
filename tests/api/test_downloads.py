"""Downloads stream from the artifact store with Range (api/downloads.py), on both stores: the
directory and S3 (moto's server), where the API has no file of the object on its disk."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.settings import Settings
from tests.utils import API_KEY, problem, upload


@pytest.fixture(params=["local", "s3"])
def any_store_client(request, clean_pg, redis_url, tmp_path):
    extra = {}
    if request.param == "s3":
        extra = {k.removeprefix("KD_").lower(): v for k, v in request.getfixturevalue("s3_env").items()}
    cfg = Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data", bootstrap_api_key=API_KEY,
                   **extra)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {API_KEY}"
        yield c, request.param


def test_ranges_on_both_stores(any_store_client, digits_teacher):
    client, kind = any_store_client
    path, _ = digits_teacher
    data = path.read_bytes()
    body = upload(client, path, "teacher").json()
    url = f"/v1/files/{body['id']}/content"
    full = client.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"' and full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["content-disposition"] == 'attachment; filename="teacher.safetensors"'

    cases = {"bytes=10-19": (10, 19), "bytes=100-": (100, len(data) - 1), "bytes=-7": (len(data) - 7, len(data) - 1),
             f"bytes=5-{len(data) + 100}": (5, len(data) - 1)}
    for header, (start, end) in cases.items():
        part = client.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == data[start:end + 1], header
        assert part.headers["content-range"] == f"bytes {start}-{end}/{len(data)}", header

    past = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert problem(past, 416)["errors"][0]["field"] == "Range"
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    for ignored in ("bytes=1-2,5-6", "lines=1-2", "bytes=x-"):  # not one byte range: the whole object
        whole = client.get(url, headers={"Range": ignored})
        assert whole.status_code == 200 and whole.content == data, ignored
    stale = client.get(url, headers={"Range": "bytes=10-", "If-Range": '"another-version"'})
    assert stale.status_code == 200 and stale.content == data
    fresh = client.get(url, headers={"Range": "bytes=10-", "If-Range": full.headers["etag"]})
    assert fresh.status_code == 206 and fresh.content == data[10:]


def test_the_s3_api_keeps_no_copy_of_what_it_serves(clean_pg, redis_url, tmp_path, s3_env, digits_teacher):
    extra = {k.removeprefix("KD_").lower(): v for k, v in s3_env.items()}
    cfg = Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data", bootstrap_api_key=API_KEY,
                   **extra)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        body = upload(client, digits_teacher[0], "teacher").json()
        assert client.get(f"/v1/files/{body['id']}/content").content == digits_teacher[0].read_bytes()
    on_disk = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert on_disk == [], on_disk  # the upload's staging file is gone, and the download used no file
