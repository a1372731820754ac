"""The artifact store, both backends behind one interface: the directory (LocalArtifactStore) and
S3 (S3ArtifactStore against a real S3 protocol server, moto's, started by tests/conftest.py).
Atomic writes, hashes, size cap, key validation, ranges, verified copies; then what only S3 has:
multipart uploads, aborted ones leaving nothing, a damaged object detected."""

from __future__ import annotations

import hashlib
import os

import pytest

from jobs.artifact_store import ChecksumMismatch, LocalArtifactStore, StoredObject, make_store
from jobs.artifact_store.s3 import MIN_PART_BYTES, S3ArtifactStore
from jobs.errors import TooLarge
from jobs.settings import Settings
from tests.utils import leftovers, s3_client, settings_for


def test_write_stream_hashes_and_stores(store):
    chunks = [b"hello ", b"", b"world" * 1000]
    stored = store.write_stream("jobs/job_1/summary.json", chunks, max_bytes=10_000)
    data = b"".join(chunks)
    assert stored == StoredObject("jobs/job_1/summary.json", len(data), hashlib.sha256(data).hexdigest())
    with store.open(stored.key) as f:
        assert f.read() == data
    assert store.size(stored.key) == len(data) and store.exists(stored.key)
    assert store.local_path(stored.key).read_bytes() == data
    if isinstance(store, LocalArtifactStore):
        assert store.local_path(stored.key) == store.root / "jobs" / "job_1" / "summary.json"
    assert leftovers(store) == ["jobs/job_1/summary.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_object(store):
    store.write_stream("a/b.bin", [b"old"])

    def broken():
        yield b"new, half written"
        raise OSError("connection reset")

    with pytest.raises(OSError):
        store.write_stream("a/b.bin", broken())
    assert store.open("a/b.bin").read() == b"old"
    assert leftovers(store) == ["a/b.bin"]


class Refused(Exception):
    pass


def refuse():
    raise Refused


def test_a_refused_commit_keeps_the_old_object(store, tmp_path):
    """`before_commit` runs once, after every byte was written and before the object changes; when it
    raises, the old object stays, no temporary is left, and its exception is what the caller sees."""
    store.write_stream("a/b.bin", [b"old"])
    written = []

    def chunks():
        yield b"new"
        written.append("all")

    def refuse_once_written():
        assert written == ["all"]  # the bytes are written first: only the commit is left
        raise Refused

    with pytest.raises(Refused):
        store.write_stream("a/b.bin", chunks(), before_commit=refuse_once_written)
    src = tmp_path / "new.bin"
    src.write_bytes(b"newer")
    with pytest.raises(Refused):
        store.put_file("a/b.bin", src, before_commit=refuse)
    assert store.open("a/b.bin").read() == b"old"
    assert leftovers(store) == ["a/b.bin"]
    allowed = []
    store.put_file("a/b.bin", src, before_commit=lambda: allowed.append(1))
    assert allowed == [1] and store.open("a/b.bin").read() == b"newer"


def test_too_large_leaves_nothing_behind(store):
    with pytest.raises(TooLarge) as raised:
        store.write_stream("files/big.npz", [b"x" * 6, b"x" * 6], max_bytes=10)
    assert raised.value.limit == 10
    assert not store.exists("files/big.npz") and leftovers(store) == []
    assert store.write_stream("files/ok.npz", [b"x" * 10], max_bytes=10).bytes == 10  # the limit itself is fine


def test_put_file_delete_and_missing(store, tmp_path):
    src = tmp_path / "teacher.onnx"
    src.write_bytes(b"\x08\x01" * 1000)
    stored = store.put_file("files/file_1/teacher.onnx", src)
    assert stored.sha256 == hashlib.sha256(src.read_bytes()).hexdigest() and stored.bytes == 2000
    store.delete(stored.key)
    store.delete(stored.key)  # missing is fine
    assert not store.exists(stored.key)
    for call in (lambda: store.open(stored.key), lambda: store.iter_range(stored.key),
                 lambda: store.fetch(stored.key, tmp_path / "copy"), lambda: store.size(stored.key)):
        with pytest.raises(FileNotFoundError):
            call()


def test_ranges_stream_the_asked_bytes(store):
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    store.write_stream("jobs/j/student.safetensors", [data])
    key = "jobs/j/student.safetensors"
    assert b"".join(store.iter_range(key)) == data
    assert b"".join(store.iter_range(key, 10, 19)) == data[10:20]
    assert b"".join(store.iter_range(key, 1024 * 1024 - 1)) == data[1024 * 1024 - 1:]
    assert b"".join(store.iter_range(key, len(data) - 1, len(data) - 1)) == data[-1:]


def test_fetch_makes_a_verified_copy(store, tmp_path):
    data = b"teacher weights" * 999
    stored = store.write_stream("files/t/file_1", [data])
    dest = tmp_path / "cache" / "job_1" / "teacher"
    assert store.fetch(stored.key, dest, sha256=stored.sha256) == dest and dest.read_bytes() == data
    with pytest.raises(ChecksumMismatch):
        store.fetch(stored.key, dest.parent / "other", sha256="0" * 64)  # the row says otherwise: refused
    assert [p.name for p in dest.parent.iterdir()] == ["teacher"]  # no copy, no temporary file


def test_list_keys_names_what_is_under_a_folder(store):
    for key in ("jobs/j1/checkpoints/student/epoch-00002.kdckpt", "jobs/j1/checkpoints/student/epoch-00001.kdckpt",
                "jobs/j1/checkpoints/baseline/epoch-00001.kdckpt", "jobs/j10/checkpoints/student/epoch-00001.kdckpt",
                "jobs/j1/attempt-1/summary.json"):
        store.write_stream(key, [b"x"])
    assert store.list_keys("jobs/j1/checkpoints") == [
        "jobs/j1/checkpoints/baseline/epoch-00001.kdckpt", "jobs/j1/checkpoints/student/epoch-00001.kdckpt",
        "jobs/j1/checkpoints/student/epoch-00002.kdckpt"]
    assert store.list_keys("jobs/none") == []


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", ".hidden",
                                 "a/.tmp-x.part", "a\\b", "C:/x", "a/b/", "name with space", "a\x00b",
                                 ".uploads/x"])
def test_bad_keys_are_refused(store, key, tmp_path):
    for call in (lambda: store.write_stream(key, [b"x"]), lambda: store.open(key),
                 lambda: store.local_path(key), lambda: store.delete(key), lambda: store.exists(key),
                 lambda: store.iter_range(key), lambda: store.fetch(key, tmp_path / "x"),
                 lambda: store.list_keys(key)):
        with pytest.raises(ValueError):
            call()
    if isinstance(store, LocalArtifactStore):
        assert not store.root.exists() or leftovers(store) == []
    else:
        assert leftovers(store) == []


# --- S3 only -------------------------------------------------------------------------------------------

@pytest.fixture
def s3_store(s3_env, tmp_path) -> S3ArtifactStore:
    return make_store(settings_for(s3_env, data_dir=tmp_path / "data", s3_part_bytes=MIN_PART_BYTES))


class CountingClient:
    """The real boto3 client, counting the calls that the store makes (the upload's shape)."""

    def __init__(self, client):
        self._client, self.calls = client, []

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if callable(attr):
            def call(*args, **kwargs):
                self.calls.append((name, len(kwargs.get("Body", b"")) if name == "upload_part" else None))
                return attr(*args, **kwargs)
            return call
        return attr


def test_a_large_upload_goes_in_parts_and_carries_its_sha256(s3_store):
    s3_store.client = counting = CountingClient(s3_store.client)
    data = os.urandom(2 * MIN_PART_BYTES + 12345)

    def chunks():  # never the whole object in one piece
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    stored = s3_store.write_stream("files/t/file_big", chunks())
    parts = [size for name, size in counting.calls if name == "upload_part"]
    assert parts == [MIN_PART_BYTES, MIN_PART_BYTES, 12345]
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_store.stat(stored.key) == stored  # the sha256 is in the object's metadata
    head = s3_client(s3_store.client._client.meta.endpoint_url).head_object(
        Bucket=s3_store.bucket, Key=f"kd/{stored.key}")
    assert head["Metadata"]["sha256"] == stored.sha256 and head["ContentLength"] == len(data)
    assert b"".join(s3_store.iter_range(stored.key, MIN_PART_BYTES - 5, MIN_PART_BYTES + 4)) == \
        data[MIN_PART_BYTES - 5:MIN_PART_BYTES + 5]
    assert leftovers(s3_store) == ["files/t/file_big"]  # the temporary upload key is gone


def test_too_large_aborts_the_multipart_upload(s3_store):
    s3_store.client = counting = CountingClient(s3_store.client)
    limit = 2 * MIN_PART_BYTES
    piece = b"x" * (1 << 20)
    with pytest.raises(TooLarge):
        s3_store.write_stream("files/t/too_big", iter(lambda: piece, None), max_bytes=limit)  # endless
    names = [name for name, _ in counting.calls]
    assert names.count("upload_part") == 2 and "abort_multipart_upload" in names
    assert "complete_multipart_upload" not in names
    assert leftovers(s3_store) == []  # no object, no pending upload holding parts


def test_a_refused_commit_of_a_multipart_upload_leaves_nothing(s3_store):
    s3_store.write_stream("files/t/big", [b"old"])
    data = os.urandom(MIN_PART_BYTES + 1)
    with pytest.raises(Refused):
        s3_store.write_stream("files/t/big", [data], before_commit=refuse)
    assert s3_store.open("files/t/big").read() == b"old"
    assert leftovers(s3_store) == ["files/t/big"]  # the parts' temporary object is deleted too


def test_a_damaged_object_is_detected_on_fetch(s3_store, tmp_path):
    stored = s3_store.write_stream("files/t/file_2", [b"good bytes" * 100])
    # Someone (a bad disk, a stray tool) rewrites the object but not its recorded sha256.
    raw = s3_client(s3_store.client.meta.endpoint_url)
    raw.put_object(Bucket=s3_store.bucket, Key=f"kd/{stored.key}", Body=b"evil bytes" * 100,
                   Metadata={"sha256": stored.sha256})
    with pytest.raises(ChecksumMismatch):
        s3_store.fetch(stored.key, tmp_path / "copy")
    with pytest.raises(ChecksumMismatch):
        s3_store.local_path(stored.key)
    assert not (tmp_path / "copy").exists()
    assert not list(s3_store.cache_dir.rglob("*")) or all(p.is_dir() for p in s3_store.cache_dir.rglob("*"))


def test_local_path_is_a_cached_verified_copy(s3_store):
    stored = s3_store.write_stream("files/t/file_3", [b"abc" * 1000])
    path = s3_store.local_path(stored.key)
    assert path.is_relative_to(s3_store.cache_dir) and path.read_bytes() == b"abc" * 1000
    s3_store.client = counting = CountingClient(s3_store.client)
    assert s3_store.local_path(stored.key) == path and counting.calls == []  # fetched once
    s3_store.delete(stored.key)
    assert not path.exists()


def test_a_bucket_that_does_not_exist_is_an_error_not_a_silent_local_fallback(s3_server, tmp_path):
    from botocore.exceptions import ClientError

    from tests.utils import S3_CREDENTIALS

    store = make_store(settings_for({"KD_ARTIFACT_URL": "s3://no-such-bucket-kd/x", "KD_S3_ENDPOINT_URL": s3_server,
                                     **S3_CREDENTIALS}, data_dir=tmp_path))
    with pytest.raises(ClientError):
        store.write_stream("files/a", [b"x"])


@pytest.mark.parametrize("env, reason", [
    ({"KD_ARTIFACT_URL": "https://bucket/x"}, "the scheme must be s3"),
    ({"KD_ARTIFACT_URL": "s3://Bad_Bucket/x"}, "not a valid bucket name"),
    ({"KD_ARTIFACT_URL": "s3://ab"}, "not a valid bucket name"),
    ({"KD_ARTIFACT_URL": "s3://"}, "not a valid bucket name"),
    ({"KD_ARTIFACT_URL": "s3://bucket/../escape"}, "the prefix"),
    ({"KD_ARTIFACT_URL": "s3://bucket/a//b"}, "the prefix"),
    ({"KD_ARTIFACT_URL": "s3://bucket/x?versionId=1"}, "no credentials, query or fragment"),
    ({"KD_ARTIFACT_URL": "s3://bucket/x", "KD_ARTIFACT_DIR": "/srv/a"}, "both set"),
    ({"KD_S3_ENDPOINT_URL": "minio:9000"}, "must be http(s)://host"),
    ({"KD_S3_ACCESS_KEY_ID": "id-only"}, "set both or neither"),
    ({"KD_S3_PART_BYTES": "1024"}, "greater than or equal to 5242880"),
])
def test_unusable_store_settings_are_refused_at_construction(env, reason, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        Settings()


def test_store_settings_parse(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_ARTIFACT_URL", "s3://kd-artifacts/team/prod/")
    monkeypatch.setenv("KD_S3_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("KD_S3_ACCESS_KEY_ID", "AKIA")
    cfg = Settings(data_dir=tmp_path)
    assert cfg.artifact_bucket_and_prefix == ("kd-artifacts", "team/prod")
    assert "s3cr3t" not in repr(cfg) and cfg.artifact_cache_path == tmp_path / "cache" / "artifacts"
    assert isinstance(make_store(cfg), S3ArtifactStore)
    monkeypatch.delenv("KD_ARTIFACT_URL")
    assert isinstance(make_store(Settings(data_dir=tmp_path)), LocalArtifactStore)  # unset: the directory
