"""The directory artifact store: atomic writes, hashes, size cap, key validation."""

from __future__ import annotations

import hashlib

import pytest

from jobs.artifact_store import LocalArtifactStore, StoredObject
from jobs.errors import TooLarge


@pytest.fixture
def store(tmp_path):
    return LocalArtifactStore(tmp_path / "artifacts")


def leftovers(store) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def test_write_stream_hashes_and_stores(store):
    chunks = [b"hello ", b"", b"world" * 1000]
    stored = store.write_stream("jobs/job_1/summary.json", chunks, max_bytes=10_000)
    data = b"".join(chunks)
    assert stored == StoredObject("jobs/job_1/summary.json", len(data), hashlib.sha256(data).hexdigest())
    with store.open(stored.key) as f:
        assert f.read() == data
    assert store.size(stored.key) == len(data) and store.exists(stored.key)
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
    with pytest.raises(FileNotFoundError):
        store.open(stored.key)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", ".hidden",
                                 "a/.tmp-x.part", "a\\b", "C:/x", "a/b/", "name with space", "a\x00b"])
def test_bad_keys_are_refused(store, key):
    for call in (lambda: store.write_stream(key, [b"x"]), lambda: store.open(key),
                 lambda: store.local_path(key), lambda: store.delete(key), lambda: store.exists(key)):
        with pytest.raises(ValueError):
            call()
    assert not store.root.exists() or leftovers(store) == []
