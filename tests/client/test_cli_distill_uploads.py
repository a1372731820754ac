"""`kd distill` uploads a file only when the service does not have its content yet (same sha256 and
purpose: the earlier file is reused), and deletes what it uploaded when the job is not submitted
(FakeService for the requests; the real API for the sha256 filter and the 422)."""

from __future__ import annotations

import json

from safetensors.torch import load_file, save_file

PROBLEM = {"type": "urn:kd:problem:invalid-field", "title": "Unprocessable Entity", "status": 422,
           "detail": "hyperparameters.alpha: must be between 0 and 1",
           "errors": [{"field": "hyperparameters.alpha", "reason": "must be between 0 and 1"}]}


def distill_args(teacher, tmp_path, *extra):
    return ("distill", "--teacher", str(teacher), "--builtin", "digits", "--poll", "0.1",
            "-o", str(tmp_path / "student.safetensors"), *extra)


def test_a_teacher_uploaded_before_is_reused(kd_fake, fake_service, tmp_path):
    teacher = tmp_path / "teacher.onnx"
    teacher.write_bytes(b"a teacher")
    first = kd_fake(*distill_args(teacher, tmp_path))
    assert first.exit_code == 0, first.output
    second = kd_fake(*distill_args(teacher, tmp_path))
    assert second.exit_code == 0, second.output
    assert len(fake_service.posted("/v1/files")) == 1
    assert "reusing file_1 for" in second.stderr and "(uploaded before: same sha256)" in second.stderr
    assert [j["json"]["teacher"]["file_id"] for j in fake_service.posted("/v1/jobs")] == ["file_1", "file_1"]
    teacher.write_bytes(b"another teacher")  # new content: uploaded
    assert kd_fake(*distill_args(teacher, tmp_path)).exit_code == 0
    assert len(fake_service.posted("/v1/files")) == 2


def test_a_refused_submission_deletes_what_this_command_uploaded(kd_fake, fake_service, tmp_path):
    teacher, data, unlabeled = tmp_path / "teacher.onnx", tmp_path / "train.npz", tmp_path / "more.npz"
    for p in (teacher, data, unlabeled):
        p.write_bytes(p.name.encode())
    assert kd_fake("files", "upload", str(data), "--purpose", "dataset").exit_code == 0  # file_1, reused below
    fake_service.refuse_jobs = PROBLEM
    out = kd_fake("distill", "--teacher", str(teacher), "--data", str(data), "--unlabeled", str(unlabeled),
                  "--alpha", "2", "-o", str(tmp_path / "s.safetensors"))
    assert out.exit_code == 2 and "hyperparameters.alpha: must be between 0 and 1" in out.stderr
    deleted = [r["path"] for r in fake_service.requests if r["method"] == "DELETE"]
    assert deleted == ["/v1/files/file_2", "/v1/files/file_3"]  # the teacher and the unlabelled inputs
    assert list(fake_service.files) == ["file_1"]  # the dataset it reused is not its to delete
    assert "deleted file_2: this command uploaded it for the job that was not submitted" in out.stderr


def test_against_the_api(kd_cli, digits_teacher, tmp_path):
    path, arch = digits_teacher
    common = ("--teacher-arch", arch["arch"], "--teacher-params", json.dumps(arch["arch_params"]), "--alpha", "2")
    kept = kd_cli("files", "upload", str(path), "--purpose", "teacher", "-q").stdout.strip()
    out = kd_cli(*distill_args(path, tmp_path, *common))
    assert out.exit_code == 2 and "hyperparameters.alpha" in out.stderr
    assert f"reusing {kept}" in out.stderr and f"uploaded {path} ->" not in out.stderr

    other = tmp_path / "other.safetensors"  # a teacher the service has not seen: uploaded, then deleted
    weights = load_file(str(path))
    first = next(iter(weights))
    weights[first] = weights[first] + 1e-3
    save_file(weights, str(other))
    out = kd_cli(*distill_args(other, tmp_path, *common))
    assert out.exit_code == 2 and f"uploaded {other} ->" in out.stderr and "deleted file_" in out.stderr, out.output
    listed = json.loads(kd_cli("files", "list", "--json").stdout)
    assert [f["id"] for f in listed] == [kept]
