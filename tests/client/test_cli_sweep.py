"""`kd jobs create` / `kd distill` flags for a sweep of T and alpha (`-T 2,4,8`, or repeated) and for
early stopping: the spec they build, a bad value, and the service accepting what they send."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kdclient import cli

SWEEP_ARGS = ("-T", "2,4", "-T", "8", "--alpha", "0.1, 0.5", "--early-stopping-patience", "3", "--restore-best")
SWEEP_HYPER = {"temperature": [2.0, 4.0, 8.0], "alpha": [0.1, 0.5], "early_stopping_patience": 3,
               "restore_best": True}


def test_sweep_and_early_stopping_flags_build_the_spec():
    out = CliRunner().invoke(cli.app, ["jobs", "create", "--teacher-file", "file_1", "--builtin", "digits",
                                       *SWEEP_ARGS, "--dry-run"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["hyperparameters"] == SWEEP_HYPER
    single = CliRunner().invoke(cli.app, ["jobs", "create", "-T", "3", "--alpha", "0.2", "--no-restore-best",
                                          "--dry-run"])
    assert json.loads(single.stdout)["hyperparameters"] == {"temperature": 3.0, "alpha": 0.2, "restore_best": False}


def test_a_value_that_is_not_a_number_is_a_usage_error():
    out = CliRunner().invoke(cli.app, ["jobs", "create", "-T", "2,four", "--dry-run"])
    assert out.exit_code == 2 and "'four' is not a number" in out.output
    out = CliRunner().invoke(cli.app, ["jobs", "create", "--early-stopping-patience", "0", "--dry-run"])
    assert out.exit_code == 2 and "--early-stopping-patience" in out.output


def test_distill_sends_the_sweep(kd_fake, fake_service, tmp_path):
    teacher = tmp_path / "teacher.onnx"
    teacher.write_bytes(b"x")
    out = kd_fake("distill", "--teacher", str(teacher), "--builtin", "digits", *SWEEP_ARGS, "--poll", "0.1",
                  "-o", str(tmp_path / "student.safetensors"))
    assert out.exit_code == 0, out.output
    [job] = fake_service.posted("/v1/jobs")
    assert job["json"]["hyperparameters"] == SWEEP_HYPER


def test_the_service_accepts_the_sweep_the_flags_send(kd_cli, teacher):
    file, arch = teacher
    out = kd_cli("jobs", "create", "--json", "--teacher-file", file.id, "--teacher-arch", arch["arch"],
                 "--teacher-params", json.dumps(arch["arch_params"]), "--builtin", "digits",
                 "--student", "mlp:hidden_sizes=16", "--epochs", "2", *SWEEP_ARGS)
    assert out.exit_code == 0, out.output
    hyper = json.loads(out.stdout)["spec"]["hyperparameters"]
    assert {k: hyper[k] for k in SWEEP_HYPER} == SWEEP_HYPER


def test_the_result_table_names_the_chosen_point():
    from rich.console import Console

    result = {"student": {"accuracy": 0.9}, "sweep": {"points": [{}] * 6,
                                                      "best": {"temperature": 4.0, "alpha": 0.1, "index": 2}}}
    console = Console(width=300, record=True)
    console.print(cli.result_table(result))
    assert "sweep: 6 (T, alpha) points; the student is T 4, alpha 0.1, the best on validation" in console.export_text()
