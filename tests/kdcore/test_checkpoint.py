"""Checkpoints: layout, verification, fallback to an older file, pruning, atomic writes."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest
import torch

from kdcore import checkpoint as ckpt
from kdcore.checkpoint import (
    HEADER_BYTES,
    MAGIC,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from kdcore.errors import CheckpointError


def make_state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": 10 * epoch,
        "rng": capture_rng_state(),
        "note": None,
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_and_layout(tmp_path: Path) -> None:
    state = make_state(3)
    info = save_checkpoint(tmp_path, epoch=3, state=state)

    assert info.path == tmp_path / "epoch-00003.kdckpt"
    assert info.epoch == 3
    data = info.path.read_bytes()
    assert info.bytes == len(data)
    assert data[:8] == MAGIC == b"KDCKPT01"
    payload = data[HEADER_BYTES:]
    assert data[8:40] == hashlib.sha256(payload).digest()
    assert info.sha256 == hashlib.sha256(payload).hexdigest()
    # The payload is plain torch.save output that weights_only reads on its own.
    assert_same(state, torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu"))
    assert_same(state, load_checkpoint(info.path, map_location="cpu"))


def test_loaded_state_restores_model_and_optimizer(tmp_path: Path) -> None:
    state = make_state(1)
    save_checkpoint(tmp_path, epoch=1, state=state)
    loaded = load_checkpoint(tmp_path / "epoch-00001.kdckpt")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.load_state_dict(loaded["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(loaded["optimizer"])
    assert optimizer.state_dict()["state"][0]["step"] == 1


def test_rng_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(123)
    save_checkpoint(tmp_path, epoch=1, state={"rng": capture_rng_state()})
    expected = torch.rand(4)
    torch.manual_seed(999)
    restore_rng_state(load_checkpoint(tmp_path / "epoch-00001.kdckpt")["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    info = save_checkpoint(tmp_path, epoch=1, state=make_state(1))
    data = info.path.read_bytes()
    info.path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(info.path)
    info.path.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(info.path)


def test_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    info = save_checkpoint(tmp_path, epoch=1, state=make_state(1))
    data = bytearray(info.path.read_bytes())
    data[HEADER_BYTES + len(data) // 2 - 20] ^= 0x01
    info.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(info.path)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "epoch-00001.kdckpt"
    buffer = io.BytesIO()
    torch.save({"model": torch.ones(3)}, buffer)  # a plain torch.save file, no header
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="not a kdcore checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "epoch-00002.kdckpt")


def test_load_latest_falls_back_and_reports_the_damaged_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, epoch=1, state=make_state(1), keep=3)
    save_checkpoint(tmp_path, epoch=2, state=make_state(2), keep=3)
    newest = save_checkpoint(tmp_path, epoch=3, state=make_state(3), keep=3)
    newest.path.write_bytes(newest.path.read_bytes()[:-50])

    state, info, skipped = load_latest_checkpoint(tmp_path)

    assert info is not None and info.epoch == 2 and info.path == tmp_path / "epoch-00002.kdckpt"
    assert state["epoch"] == 2
    assert_same(state, make_state(2))
    assert len(skipped) == 1
    assert skipped[0][0] == newest.path and "truncated" in skipped[0][1]
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()[HEADER_BYTES:]).hexdigest()


def test_load_latest_on_empty_or_all_damaged(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "absent") == (None, None, [])
    info = save_checkpoint(tmp_path, epoch=1, state={"epoch": 1})
    info.path.write_bytes(b"garbage")
    state, found, skipped = load_latest_checkpoint(tmp_path)
    assert state is None and found is None
    assert [p for p, _ in skipped] == [info.path]


def test_newest_is_chosen_by_epoch_number(tmp_path: Path) -> None:
    for epoch in (9, 10):  # "epoch-00010" sorts after "epoch-00009" by number, not by mtime
        save_checkpoint(tmp_path, epoch=epoch, state={"epoch": epoch})
    state, info, skipped = load_latest_checkpoint(tmp_path)
    assert state == {"epoch": 10} and info.epoch == 10 and skipped == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-00009.kdckpt", "epoch-00010.kdckpt"]


@pytest.mark.parametrize("keep", [2, 3])
def test_pruning_keeps_the_newest(tmp_path: Path, keep: int) -> None:
    for epoch in range(1, 6):
        save_checkpoint(tmp_path, epoch=epoch, state={"epoch": epoch}, keep=keep)
    assert [ckpt._epoch_of(p) for p in list_checkpoints(tmp_path)] == list(range(6 - keep, 6))


def test_keep_below_two_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, epoch=1, state={}, keep=1)


def test_saving_an_older_epoch_drops_the_abandoned_newer_ones(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, epoch=epoch, state={"epoch": epoch})
    # Resumed from epoch 1 (say 2 and 3 were damaged): the new epoch 2 replaces the old timeline.
    save_checkpoint(tmp_path, epoch=2, state={"epoch": 2, "new": True})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-00002.kdckpt"]
    assert load_latest_checkpoint(tmp_path)[0] == {"epoch": 2, "new": True}


def test_no_temp_file_left_behind(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, epoch=1, state=make_state(1))
    save_checkpoint(tmp_path, epoch=2, state=make_state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-00001.kdckpt", "epoch-00002.kdckpt"]


def test_failure_mid_write_leaves_no_temp_and_keeps_old_files(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, epoch=1, state=make_state(1))
    save_checkpoint(tmp_path, epoch=2, state=make_state(2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = torch.save
    seen_temp: list[str] = []

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"x" * 4096)  # some bytes reach the temp file, then the disk "fills up"
        seen_temp.extend(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, epoch=3, state=make_state(3))
    monkeypatch.setattr(torch, "save", real_save)

    assert seen_temp, "the write went through a temp file"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_latest_checkpoint(tmp_path)[1].epoch == 2


def test_unserialisable_state_is_refused_before_writing(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, epoch=1, state={"epoch": 1})
    with pytest.raises(TypeError, match=r"state\['extra'\]\['lock'\]"):
        save_checkpoint(tmp_path, epoch=2, state={"model": torch.ones(1000), "extra": {"lock": threading.Lock()}})
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-00001.kdckpt"]


def test_values_weights_only_would_refuse_are_refused(tmp_path: Path) -> None:
    import numpy as np

    # np.float64 is a float subclass that torch.save pickles but weights_only cannot read back.
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(tmp_path, epoch=1, state={"loss": np.float64(0.5)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sync", [True, False])
def test_atomic_write_syncs_only_while_sync_writes_is_on(tmp_path, monkeypatch, sync):
    synced = []
    real_fsync = ckpt.os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    monkeypatch.setattr(ckpt, "SYNC_WRITES", sync)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with ckpt.atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # atomic either way: the old file until the rename
    assert target.read_bytes() == b"new"
    assert len(synced) == (2 if sync else 0)  # the file, then its directory
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left
