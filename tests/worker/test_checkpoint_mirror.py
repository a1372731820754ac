"""worker/checkpoint_mirror.py on both stores: what the trainer writes and prunes locally is what the
store holds, and a fresh machine pulls it back (a damaged S3 object left out, so kdcore resumes from
an older checkpoint rather than failing)."""

from __future__ import annotations

import pytest
import torch

from jobs.artifact_store import LocalArtifactStore, make_store
from jobs.artifact_store.s3 import MIN_PART_BYTES
from kdcore.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from tests.utils import s3_client, settings_for
from worker.checkpoint_mirror import CheckpointMirror

PREFIX = "jobs/job_1/checkpoints"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return make_store(settings_for(request.getfixturevalue("s3_env"), data_dir=tmp_path / "api",
                                   s3_part_bytes=MIN_PART_BYTES))


def state(epoch: int) -> dict:
    return {"epoch": epoch, "w": torch.full((4,), float(epoch))}


def test_push_mirrors_writes_and_prunes_and_a_new_machine_pulls_them(store, tmp_path):
    one = CheckpointMirror(store, prefix=PREFIX, local_dir=tmp_path / "machine-one")
    for epoch in (1, 2, 3):
        save_checkpoint(one.local_dir / "student", epoch=epoch, state=state(epoch))  # keeps the newest 2
        one.push()
    save_checkpoint(one.local_dir / "baseline", epoch=1, state=state(1))
    one.push()
    assert store.list_keys(PREFIX) == [f"{PREFIX}/baseline/epoch-00001.kdckpt",
                                       f"{PREFIX}/student/epoch-00002.kdckpt", f"{PREFIX}/student/epoch-00003.kdckpt"]

    two = CheckpointMirror(store, prefix=PREFIX, local_dir=tmp_path / "machine-two")
    assert two.pull() == 3
    loaded, info, skipped = load_latest_checkpoint(two.local_dir / "student")
    assert info.epoch == 3 and skipped == [] and torch.equal(loaded["w"], state(3)["w"])
    # Resumed from an older epoch (say a damaged newest one): kdcore removes the newer file, the store follows.
    save_checkpoint(two.local_dir / "student", epoch=2, state=state(2))
    two.push()
    assert [k.rsplit("/", 1)[1] for k in store.list_keys(f"{PREFIX}/student")] == ["epoch-00002.kdckpt"]


def test_a_damaged_object_in_s3_is_left_out_of_the_pull(s3_env, tmp_path):
    store = make_store(settings_for(s3_env, data_dir=tmp_path / "api"))
    one = CheckpointMirror(store, prefix=PREFIX, local_dir=tmp_path / "one")
    for epoch in (1, 2):
        save_checkpoint(one.local_dir / "student", epoch=epoch, state=state(epoch))
        one.push()
    newest = f"{PREFIX}/student/epoch-00002.kdckpt"
    recorded = store.stat(newest).sha256
    s3_client(s3_env["KD_S3_ENDPOINT_URL"]).put_object(
        Bucket=store.bucket, Key=f"{store.prefix}/{newest}", Body=b"KDCKPT01" + b"\0" * 100,
        Metadata={"sha256": recorded})  # rewritten, its recorded sha256 kept
    two = CheckpointMirror(store, prefix=PREFIX, local_dir=tmp_path / "two")
    assert two.pull() == 1
    assert [p.name for p in list_checkpoints(two.local_dir / "student")] == ["epoch-00001.kdckpt"]


class Refused(Exception):
    pass


def _contents(store) -> dict[str, bytes]:
    out = {}
    for key in store.list_keys(PREFIX):
        with store.open(key) as f:
            out[key] = f.read()
    return out


def test_a_refused_write_leaves_the_store_as_it_was(store, tmp_path):
    """`before_write` (the attempt's lease check) raising: no upload appears and nothing is pruned;
    allowed again, the next push catches up."""
    allowed = [True]

    def before_write():
        if not allowed[0]:
            raise Refused

    mirror = CheckpointMirror(store, prefix=PREFIX, local_dir=tmp_path / "machine", before_write=before_write)
    for epoch in (1, 2):
        save_checkpoint(mirror.local_dir / "student", epoch=epoch, state=state(epoch))
        mirror.push()
    held = _contents(store)
    allowed[0] = False
    save_checkpoint(mirror.local_dir / "student", epoch=3, state=state(3))  # prunes epoch 1 locally
    with pytest.raises(Refused):
        mirror.push()
    assert _contents(store) == held
    allowed[0] = True
    mirror.push()
    assert [k.rsplit("/", 1)[1] for k in store.list_keys(f"{PREFIX}/student")] == \
        ["epoch-00002.kdckpt", "epoch-00003.kdckpt"]
