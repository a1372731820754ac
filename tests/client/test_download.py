"""Resumable, verified downloads against the real API in-process: the files content route serves
ETag (the sha256) and Range exactly like the student route. Bytes on the wire are counted with an
httpx response hook."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from kdclient import IntegrityError


@pytest.fixture
def dataset(kd, tmp_path):
    """An uploaded .npz dataset of a few hundred KB: (file, its bytes)."""
    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "train.npz"
    np.savez(path, x=rng.normal(size=(1200, 64)).astype(np.float32), y=rng.integers(0, 10, 1200))
    return kd.upload_file(path, "dataset"), path.read_bytes()


@pytest.fixture
def wire(client):
    """(Range, If-Range, status, body bytes) of every download response the API sent."""
    seen = []

    def hook(response):
        if response.request.url.path.endswith("/content"):
            response.read()
            seen.append((response.request.headers.get("range"), response.request.headers.get("if-range"),
                         response.status_code, len(response.content)))

    client.event_hooks["response"] = [hook]
    yield seen
    client.event_hooks["response"] = []


def test_a_partial_download_is_resumed_and_verified(kd, dataset, wire, tmp_path):
    file, data = dataset
    half = len(data) // 2
    out = tmp_path / "dl" / "train.npz"
    out.parent.mkdir()
    (tmp_path / "dl" / "train.npz.part").write_bytes(data[:half])
    (tmp_path / "dl" / "train.npz.part.etag").write_text(f'"{file.sha256}"')

    assert kd.download_file(file.id, out) == out
    assert wire == [(f"bytes={half}-", f'"{file.sha256}"', 206, len(data) - half)]  # only the rest
    assert out.read_bytes() == data and hashlib.sha256(out.read_bytes()).hexdigest() == file.sha256
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.npz"]


def test_a_partial_file_without_its_etag_is_resumed_too(kd, dataset, wire, tmp_path):
    file, data = dataset
    out = tmp_path / "train.npz"
    (tmp_path / "train.npz.part").write_bytes(data[:1000])  # e.g. left by `curl -o train.npz.part`
    kd.download_file(file.id, out)
    assert wire == [("bytes=1000-", None, 206, len(data) - 1000)]
    assert out.read_bytes() == data


def test_a_corrupted_partial_file_fails_verification_and_is_removed(kd, dataset, wire, tmp_path):
    file, data = dataset
    out = tmp_path / "train.npz"
    corrupted = bytearray(data[:5000])
    corrupted[100] ^= 0xFF
    (tmp_path / "train.npz.part").write_bytes(bytes(corrupted))
    (tmp_path / "train.npz.part.etag").write_text(f'"{file.sha256}"')

    with pytest.raises(IntegrityError) as e:
        kd.download_file(file.id, out)
    assert e.value.expected == file.sha256 and e.value.actual != file.sha256
    assert "sha256" in str(e.value)
    assert wire == [("bytes=5000-", f'"{file.sha256}"', 206, len(data) - 5000)]
    assert list(tmp_path.glob("train.npz*")) == []  # the bad file is gone, nothing was written

    kd.download_file(file.id, out)  # the next try starts from zero and succeeds
    assert wire[-1] == (None, None, 200, len(data)) and out.read_bytes() == data


def test_a_complete_download_replaces_an_existing_file(kd, dataset, wire, tmp_path):
    file, data = dataset
    out = tmp_path / "train.npz"
    out.write_bytes(b"an older download")
    kd.download_file(file.id, out)
    assert wire == [(None, None, 200, len(data))] and out.read_bytes() == data
