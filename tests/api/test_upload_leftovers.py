"""What a killed upload leaves is told from a live one (issue 16 item 6): upload temp files are
locked while in use, so a sweep removes only those of dead processes; an upload whose stored
object was swept before its row was committed records nothing. The kills themselves are in
tests/reliability/test_crashes_leak_nothing.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from api import uploads
from api.uploads import _locked_temp_file, sweep_abandoned_uploads
from tests.utils import problem, upload


def test_the_sweep_removes_only_temp_files_no_live_process_holds(tmp_path):
    tmp = tmp_path / "tmp"
    live_path, live = _locked_temp_file(tmp)  # an upload of this process, still running
    live.write(b"half an upload")
    # one whose process died: written and locked by a child that then exited
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from api.uploads import "
                    "_locked_temp_file; p, f = _locked_temp_file(Path(sys.argv[1])); f.write(b'x'); "
                    "print(p.name)", str(tmp)], check=True, cwd=os.getcwd())
    dead = [p for p in tmp.glob("upload-*.part") if p != live_path]
    stale_staging, fresh_staging = tmp / ".new-upload-old.part", tmp / ".new-upload-now.part"
    stale_staging.write_bytes(b"")
    fresh_staging.write_bytes(b"")
    aged = time.time() - 2 * uploads.STAGING_STALE_SECONDS
    os.utime(stale_staging, (aged, aged))
    (tmp / "unrelated.txt").write_text("left alone")

    assert len(dead) == 1
    assert sorted(sweep_abandoned_uploads(tmp)) == sorted([dead[0], stale_staging])
    assert sorted(p.name for p in tmp.iterdir()) == sorted([live_path.name, fresh_staging.name, "unrelated.txt"])
    assert sweep_abandoned_uploads(tmp) == []  # a live upload's file survives every round
    live.close()  # its process gives it up (as if it died): now it goes
    assert sweep_abandoned_uploads(tmp) == [live_path]
    assert sweep_abandoned_uploads(tmp_path / "missing") == []


def test_an_upload_whose_object_was_swept_before_its_commit_is_a_503_recording_nothing(client, settings,
                                                                                        digits_teacher, monkeypatch):
    store = client.app.state.store
    put_file = store.put_file

    def put_then_lose(key, path):  # the sweep of unrecorded objects ran between the put and the commit
        stored = put_file(key, path)
        store.delete(key)
        return stored

    monkeypatch.setattr(store, "put_file", put_then_lose)
    err = problem(upload(client, digits_teacher[0], "teacher"), 503)
    assert "send it again" in err["detail"]
    assert client.get("/v1/files").json()["data"] == []
    assert list((settings.data_dir / "tmp").glob("*")) == []
    monkeypatch.undo()
    assert upload(client, digits_teacher[0], "teacher").status_code == 201
