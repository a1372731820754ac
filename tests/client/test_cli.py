"""The `kd` command line: the student shorthand, spec building, and the commands against the real API
in-process (typer's CliRunner; `make_client` is pointed at the in-process API)."""

from __future__ import annotations

import importlib
import json
import tomllib

import numpy as np
import pytest
from typer.testing import CliRunner

from kdclient import cli
from harness.services import ROOT

runner = CliRunner()


@pytest.mark.parametrize("text, expected", [
    ("mlp", ("mlp", {})),
    ("mlp:hidden_sizes=64", ("mlp", {"hidden_sizes": [64]})),
    ("mlp:hidden_sizes=64-32,dropout=0.1", ("mlp", {"hidden_sizes": [64, 32], "dropout": 0.1})),
    ("mlp:hidden_sizes=[64, 32],dropout=0", ("mlp", {"hidden_sizes": [64, 32], "dropout": 0})),
    ("cnn1d:channels=16-32,kernel_size=5", ("cnn1d", {"channels": [16, 32], "kernel_size": 5})),
    ("resnet:depth=20,width=16", ("resnet", {"depth": 20, "width": 16})),
    ("x:flag=true,name=abc", ("x", {"flag": True, "name": "abc"})),
])
def test_the_student_shorthand(text, expected):
    assert cli.parse_arch(text) == expected


@pytest.mark.parametrize("text", ["", ":hidden_sizes=64", "mlp:hidden_sizes", "mlp:=3"])
def test_a_bad_shorthand_is_refused(text):
    with pytest.raises(ValueError):
        cli.parse_arch(text)


def test_flags_override_the_spec_file(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({
        "teacher": {"file_id": "file_a", "arch": "mlp", "arch_params": {"hidden_sizes": [256]}},
        "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [8], "dropout": 0.2}},
        "dataset": {"builtin": "digits", "standardize": True},
        "hyperparameters": {"temperature": 2, "epochs": 5}, "baseline": True}))
    result = runner.invoke(cli.app, ["jobs", "create", "--dry-run", "--spec", str(spec_file), "--teacher-file",
                                     "file_b", "--student-params", '{"hidden_sizes": [32]}', "-T", "6",
                                     "--lr", "0.01", "--no-baseline", "--train-file", "file_d",
                                     "--metadata", '{"run": "a"}'])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)
    assert spec == {
        "teacher": {"file_id": "file_b", "arch": "mlp", "arch_params": {"hidden_sizes": [256]}},
        "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [32], "dropout": 0.2}},
        "dataset": {"train_file_id": "file_d", "standardize": True},
        "hyperparameters": {"temperature": 6.0, "epochs": 5, "learning_rate": 0.01},
        "baseline": False, "metadata": {"run": "a"}}


def test_unlabelled_and_augmentation_flags_fill_the_spec():
    result = runner.invoke(cli.app, ["jobs", "create", "--dry-run", "--train-file", "file_t", "--unlabeled-file",
                                     "file_u1", "--unlabeled-file", "file_u2", "--labels-per-class", "10",
                                     "--augment", "shift,mixup", "--shift-max", "3", "--mixup-alpha", "0.2"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)
    assert spec["dataset"] == {"train_file_id": "file_t", "unlabeled_file_ids": ["file_u1", "file_u2"],
                               "labels_per_class": 10}
    assert spec["hyperparameters"] == {"augment": ["shift", "mixup"], "shift_max": 3, "mixup_alpha": 0.2}
    result = runner.invoke(cli.app, ["jobs", "create", "--dry-run", "--builtin", "digits", "--augment", "noise"])
    assert json.loads(result.stdout)["hyperparameters"] == {"augment": "noise"}


def test_the_result_table_shows_labelled_and_unlabelled_rows():
    from rich.console import Console

    table = cli.result_table({"evaluated_on": "test", "num_eval_samples": 359,
                              "teacher": {"accuracy": 0.99}, "student": {"accuracy": None, "agreement": 0.9,
                                                                          "train_rows": {"labeled": 100,
                                                                                         "unlabeled": 1193},
                                                                          "steps": 220},
                              "baseline": {"accuracy": 0.89, "train_rows": {"labeled": 100, "unlabeled": 0},
                                           "steps": 220}})
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "100 + 1,193, 220 steps" in text and "100 + 0, 220 steps" in text


def test_resource_flags_fill_the_resources_section(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"resources": {"device": "cpu", "processes": 1}}))
    result = runner.invoke(cli.app, ["jobs", "create", "--dry-run", "--spec", str(spec_file), "--builtin", "digits",
                                     "--processes", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resources"] == {"device": "cpu", "processes": 2}
    result = runner.invoke(cli.app, ["jobs", "create", "--dry-run", "--builtin", "digits",
                                     "--resources-device", "cuda", "--gpus", "2"])
    assert json.loads(result.stdout)["resources"] == {"device": "cuda", "gpus": 2}


@pytest.mark.parametrize("args, needle", [
    (["jobs", "create", "--dry-run", "--student", "mlp:hidden_sizes"], "--student"),
    (["jobs", "create", "--dry-run", "--teacher-params", "{nope"], "--teacher-params"),
    (["jobs", "create", "--dry-run", "--spec", "/nonexistent/spec.json"], "--spec"),
    (["jobs", "create", "--dry-run", "--epochs", "many"], "--epochs"),
    (["files", "upload", "/nonexistent.safetensors", "--purpose", "teacher"], "nonexistent"),
    (["files", "upload", __file__, "--purpose", "weights"], "--purpose"),
])
def test_usage_errors_exit_2(args, needle):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_the_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["kd"].partition(":")
    assert getattr(importlib.import_module(module), name) is cli.main


# --- against the in-process API -----------------------------------------------------------------------

def test_files_and_jobs_commands(kd_cli, digits_teacher, tmp_path):
    path, arch = digits_teacher
    up = kd_cli("files", "upload", str(path), "--purpose", "teacher", "-q")
    assert up.exit_code == 0, up.output
    file_id = up.stdout.strip()
    assert file_id.startswith("file_")
    listed = kd_cli("files", "list")
    assert listed.exit_code == 0 and file_id in listed.stdout and "teacher" in listed.stdout
    assert json.loads(kd_cli("files", "get", file_id, "--json").stdout)["id"] == file_id

    created = kd_cli("jobs", "create", "--teacher-file", file_id, "--teacher-arch", "mlp", "--teacher-params",
                     json.dumps(arch["arch_params"]), "--student", "mlp:hidden_sizes=16", "--builtin", "digits",
                     "-T", "3", "--alpha", "0.5", "--epochs", "1", "--json")
    assert created.exit_code == 0, created.output
    job = json.loads(created.stdout)
    assert job["status"] == "queued" and job["spec"]["hyperparameters"]["temperature"] == 3.0
    assert job["spec"]["student"]["arch_params"]["hidden_sizes"] == [16]

    got = kd_cli("jobs", "get", job["id"])
    assert got.exit_code == 0, got.output
    for needle in (job["id"], "queued", "mlp", "T 3.0, alpha 0.5", "1 epochs"):
        assert needle in got.stdout
    assert job["id"] in kd_cli("jobs", "list", "--status", "queued").stdout
    assert job["id"] not in kd_cli("jobs", "list", "--status", "succeeded").stdout

    early = kd_cli("jobs", "download", job["id"], "-o", str(tmp_path / "s.safetensors"))
    assert early.exit_code == 2 and "409" in early.stderr and "queued" in early.stderr

    cancel = kd_cli("jobs", "cancel", job["id"])
    assert cancel.exit_code == 0 and "cancelled" in cancel.stdout
    watch = kd_cli("jobs", "watch", job["id"], "--poll", "0.1")
    assert watch.exit_code == 1 and "cancelled" in watch.stderr
    again = kd_cli("jobs", "cancel", job["id"])
    assert again.exit_code == 2 and "409" in again.stderr

    delete = kd_cli("files", "delete", file_id)
    assert delete.exit_code == 0, delete.output


def test_api_errors_print_the_problem_and_exit_2(kd_cli, digits_teacher):
    missing = kd_cli("jobs", "get", "job_nope")
    assert missing.exit_code == 2
    assert "404 Not Found" in missing.stderr and "no job 'job_nope'" in missing.stderr
    assert "Traceback" not in missing.output

    file_id = kd_cli("files", "upload", str(digits_teacher[0]), "--purpose", "teacher", "-q").stdout.strip()
    bad = kd_cli("jobs", "create", "--teacher-file", file_id, "--teacher-arch", "mlp", "--teacher-params",
                 '{"hidden_sizes": [128]}', "--alpha", "2")
    assert bad.exit_code == 2 and "422" in bad.stderr and "hyperparameters.alpha" in bad.stderr
    assert "Traceback" not in bad.output

    wrong = kd_cli("files", "upload", __file__, "--purpose", "teacher")
    assert wrong.exit_code == 2 and "file:" in wrong.stderr


def test_an_unreachable_service_is_one_line(monkeypatch):
    monkeypatch.setattr("kdclient.client._sleep", lambda s: None)
    result = runner.invoke(cli.app, ["--url", "http://127.0.0.1:9", "jobs", "list"])
    assert result.exit_code == 2 and "cannot reach http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.output


# --- unlabelled inputs, labels per class, augmentation: the requests, captured (no server needed) ---------

def test_distill_uploads_each_unlabelled_file_and_lists_their_ids(kd_fake, fake_service, tmp_path):
    teacher, data = tmp_path / "teacher.onnx", tmp_path / "labelled.npz"
    unlabeled = [tmp_path / "inputs_a.npz", tmp_path / "inputs_b.csv"]
    for p in (teacher, data, *unlabeled):
        p.write_bytes(p.name.encode())  # four contents: an equal one would be reused, not uploaded again
    result = kd_fake("distill", "--teacher", str(teacher), "--data", str(data), "--unlabeled", str(unlabeled[0]),
                     "--unlabeled", str(unlabeled[1]), "--labels-per-class", "10", "--augment", "shift, mixup",
                     "--shift-max", "3", "--mixup-alpha", "0.2", "--student", "mlp:hidden_sizes=16",
                     "--poll", "0.1", "-o", str(tmp_path / "student.safetensors"))
    assert result.exit_code == 0, result.output
    uploads = fake_service.posted("/v1/files")
    assert [(u["filename"], u["purpose"]) for u in uploads] == [
        ("teacher.onnx", "teacher"), ("labelled.npz", "dataset"), ("inputs_a.npz", "dataset"),
        ("inputs_b.csv", "dataset")]
    [job] = fake_service.posted("/v1/jobs")
    spec = job["json"]
    assert spec["dataset"] == {"train_file_id": "file_2", "unlabeled_file_ids": ["file_3", "file_4"],
                               "labels_per_class": 10}
    assert spec["hyperparameters"] == {"augment": ["shift", "mixup"], "shift_max": 3, "mixup_alpha": 0.2}
    assert "1193 samples, 0 labelled" in result.stderr  # each upload's description: rows and labelled rows
    # the comparison: rows and steps of both runs; no labels to score on, so agreement and a note saying so
    assert "100 + 1,193, 220 steps" in result.stdout and "100 + 0, 220 steps" in result.stdout
    assert "91.20%" in result.stdout and "61.10%" in result.stdout
    assert "validation split has no labels: agreement with the teacher is the score" in result.stdout
    assert (tmp_path / "student.safetensors").read_bytes() == fake_service.student


def test_distill_without_unlabelled_files_sends_no_unlabelled_field(kd_fake, fake_service, tmp_path):
    teacher = tmp_path / "teacher.onnx"
    teacher.write_bytes(b"x")
    result = kd_fake("distill", "--teacher", str(teacher), "--builtin", "digits", "--labels-per-class", "5",
                     "--poll", "0.1", "-o", str(tmp_path / "s.safetensors"))
    assert result.exit_code == 0, result.output
    [job] = fake_service.posted("/v1/jobs")
    assert job["json"]["dataset"] == {"builtin": "digits", "labels_per_class": 5}
    assert [u["purpose"] for u in fake_service.posted("/v1/files")] == ["teacher"]


def test_jobs_create_sends_unlabelled_ids_merged_over_the_spec_file(kd_fake, fake_service, tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"dataset": {"train_file_id": "file_t", "unlabeled_file_ids": ["file_a"]},
                                     "hyperparameters": {"augment": ["noise"], "mixup_alpha": 0.4}}))
    result = kd_fake("jobs", "create", "--spec", str(spec_file), "--unlabeled-file", "file_b", "--unlabeled-file",
                     "file_c", "--augment", "crop_flip,mixup", "--shift-max", "2", "-q")
    assert result.exit_code == 0, result.output
    [job] = fake_service.posted("/v1/jobs")
    assert job["json"]["dataset"] == {"train_file_id": "file_t", "unlabeled_file_ids": ["file_a", "file_b", "file_c"]}
    assert job["json"]["hyperparameters"] == {"augment": ["crop_flip", "mixup"], "mixup_alpha": 0.4, "shift_max": 2}
    # a single name stays a string; "none" too
    for value, sent in (("noise", "noise"), ("none", "none"), ("shift,", ["shift"])):
        out = runner.invoke(cli.app, ["jobs", "create", "--dry-run", "--builtin", "digits", "--augment", value])
        assert json.loads(out.stdout)["hyperparameters"] == {"augment": sent}, value


def test_jobs_get_and_list_show_rows_steps_and_agreement(kd_fake, fake_service):
    fake_service.job("job_1", "succeeded", {
        "dataset": {"train_file_id": "file_t", "unlabeled_file_ids": ["file_u1", "file_u2"], "labels_per_class": 10},
        "hyperparameters": {"temperature": 4.0, "alpha": 0.1, "augment": ["shift", "mixup"], "shift_max": 4,
                            "mixup_alpha": 0.4, "noise_std": 0.1}, "baseline": True})
    got = kd_fake("jobs", "get", "job_1")
    assert got.exit_code == 0, got.output
    out = got.stdout
    assert "file_u1, file_u2" in out and "10 per class" in out
    assert "shift (max 4), mixup (alpha 0.4)" in out and "noise (" not in out
    assert "trained on (labelled + unlabelled)" in out
    assert "100 + 1,193, 220 steps" in out and "100 + 0, 220 steps" in out
    assert "evaluated on validation" in out and "agreement with the teacher is the score" in out
    listed = kd_fake("jobs", "list")
    assert listed.exit_code == 0 and "agreement 91.20%" in listed.stdout
    raw = json.loads(kd_fake("jobs", "get", "job_1", "--json").stdout)
    assert raw["result"]["student"]["train_rows"] == {"labeled": 100, "unlabeled": 1193}


def test_a_result_without_the_new_fields_still_prints():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(cli.result_table({"evaluated_on": "test", "num_eval_samples": 10, "teacher": {"accuracy": 0.9},
                                    "student": {"accuracy": 0.8, "agreement": 0.85}, "baseline": {"accuracy": 0.7},
                                    "distillation_gain": 0.1}))
    text = console.export_text()
    assert "80.00%" in text and "+10.0 points" in text and "no labels" not in text
    assert "steps" not in text


def test_files_list_and_get_show_labelled_rows(kd_fake, fake_service):
    fake_service.file("file_u", num_samples=5000, num_labeled=0, input_shape=[64])
    fake_service.file("file_l", num_samples=1200, num_labeled=300, input_shape=[64], num_classes=10)
    fake_service.file("file_x", purpose="teacher", format="onnx", kind="onnx", num_classes=10)
    listed = kd_fake("files", "list")
    assert listed.exit_code == 0, listed.output
    assert "rows (labelled)" in listed.stdout
    lines = {line.split()[1]: line for line in listed.stdout.splitlines() if "file_" in line}
    assert "5,000 (0)" in lines["file_u"] and "1,200 (300)" in lines["file_l"]
    got = kd_fake("files", "get", "file_l")
    assert got.exit_code == 0 and "1200 samples, 300 labelled" in got.stdout
    assert "labelled" not in kd_fake("files", "get", "file_x").stdout


def test_unlabelled_flags_against_the_api(kd_cli, digits_teacher, tmp_path):
    """Needs the server side of issue 12 (dataset.unlabeled_file_ids, labels_per_class, augment lists):
    an x-only upload is described with num_labeled 0 and the job's echoed spec keeps the new fields."""
    import numpy as np

    from kdcore.data import load_builtin

    path, arch = digits_teacher
    teacher_id = kd_cli("files", "upload", str(path), "--purpose", "teacher", "-q").stdout.strip()
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=load_builtin("digits")["train"].x.numpy()[:50])
    up = kd_cli("files", "upload", str(inputs), "--purpose", "dataset")
    assert up.exit_code == 0, up.output
    assert "50 samples, 0 labelled" in up.stdout
    file_id = up.stdout.split()[0]
    assert "50 (0)" in kd_cli("files", "list").stdout
    created = kd_cli("jobs", "create", "--teacher-file", teacher_id, "--teacher-arch", "mlp", "--teacher-params",
                     json.dumps(arch["arch_params"]), "--student", "mlp:hidden_sizes=16", "--builtin", "digits",
                     "--labels-per-class", "10", "--unlabeled-file", file_id, "--augment", "noise,mixup",
                     "--mixup-alpha", "0.3", "--alpha", "0.1", "--epochs", "1", "--json")
    assert created.exit_code == 0, created.output
    spec = json.loads(created.stdout)["spec"]
    assert spec["dataset"]["unlabeled_file_ids"] == [file_id] and spec["dataset"]["labels_per_class"] == 10
    assert spec["hyperparameters"]["augment"] == ["noise", "mixup"] and spec["hyperparameters"]["mixup_alpha"] == 0.3
    got = kd_cli("jobs", "get", json.loads(created.stdout)["id"])
    assert got.exit_code == 0 and file_id in got.stdout and "10 per class" in got.stdout
    assert "noise" in got.stdout and "mixup (alpha 0.3)" in got.stdout


# --- a spec written for kdcore (local paths, as examples/*.json) ------------------------------------

def test_jobs_create_uploads_the_local_files_a_kdcore_spec_names(kd_cli, digits_teacher, tmp_path, monkeypatch):
    """`kd jobs create --spec examples/...json` used to be refused (the service names files by id):
    the CLI uploads each local file (relative to the current directory, else to the spec) and
    sends the ids; a file named twice is uploaded once."""
    path, arch = digits_teacher
    from kdcore.data import load_builtin

    digits = load_builtin("digits")
    np.savez(tmp_path / "train.npz", x=digits["train"].x.numpy(), y=digits["train"].y.numpy())
    np.savez(tmp_path / "extra.npz", x=digits["test"].x.numpy()[:50])
    (tmp_path / "teacher.safetensors").write_bytes(path.read_bytes())
    spec = {"teacher": {"path": "teacher.safetensors", **arch},  # relative to the spec file
            "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
            "dataset": {"train_path": str(tmp_path / "train.npz"),
                        "unlabeled_paths": ["extra.npz", "extra.npz"]},
            "hyperparameters": {"epochs": 1, "device": "cpu"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.chdir("/")

    dry = kd_cli("jobs", "create", "--spec", str(tmp_path / "spec.json"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would upload" in dry.stderr and kd_cli("files", "list", "--json").stdout.count('"id"') == 0

    created = kd_cli("jobs", "create", "--spec", str(tmp_path / "spec.json"), "--json")
    assert created.exit_code == 0, created.output
    job = json.loads(created.stdout)
    files = {f["id"]: f for f in json.loads(kd_cli("files", "list", "--json").stdout)}
    assert len(files) == 3  # teacher, train, extra (once)
    assert files[job["spec"]["teacher"]["file_id"]]["purpose"] == "teacher"
    assert files[job["spec"]["dataset"]["train_file_id"]]["purpose"] == "dataset"
    extra = job["spec"]["dataset"]["unlabeled_file_ids"]
    assert len(extra) == 2 and extra[0] == extra[1] and files[extra[0]]["num_labeled"] == 0
    assert "path" not in job["spec"]["teacher"] and "train_path" not in job["spec"]["dataset"]


def test_a_missing_local_file_is_a_usage_error_naming_the_field(kd_cli, tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"teacher": {"path": "nope.onnx"}}))
    result = kd_cli("jobs", "create", "--spec", str(tmp_path / "spec.json"))
    assert result.exit_code == 2 and "teacher.path" in result.output and "nope.onnx" in result.output


def test_the_clients_file_table_is_the_services():
    from jobs.spec_files import FILE_FIELDS

    assert [(kd, api) for kd, api, _ in cli.LOCAL_FILE_FIELDS] == [(f.kd, f.api) for f in FILE_FIELDS]
    assert all(purpose in f.purposes for (_, _, purpose), f in zip(cli.LOCAL_FILE_FIELDS, FILE_FIELDS))
