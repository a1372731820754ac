"""`--repeats N` on `kd jobs create` / `kd distill`, and the spread over seeds under the result table."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from kdclient import cli


def test_the_flag_builds_the_spec_and_is_checked():
    out = CliRunner().invoke(cli.app, ["jobs", "create", "--builtin", "digits", "--repeats", "3", "--seed", "7",
                                       "--dry-run"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["hyperparameters"] == {"repeats": 3, "seed": 7}
    out = CliRunner().invoke(cli.app, ["jobs", "create", "--repeats", "0", "--dry-run"])
    assert out.exit_code == 2 and "--repeats" in out.output


def test_the_service_accepts_the_repeats_the_flag_sends(kd_cli, teacher):
    file, arch = teacher
    out = kd_cli("jobs", "create", "--json", "--teacher-file", file.id, "--teacher-arch", arch["arch"],
                 "--teacher-params", json.dumps(arch["arch_params"]), "--builtin", "digits",
                 "--student", "mlp:hidden_sizes=16", "--epochs", "2", "--repeats", "2")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["spec"]["hyperparameters"]["repeats"] == 2


def test_the_result_table_gives_the_spread_over_seeds():
    result = {"student": {"accuracy": 0.9}, "baseline": {"accuracy": 0.8}, "distillation_gain": 0.1,
              "repeats": {"seeds": [0, 1, 2], "metric": "accuracy",
                          "student": {"values": [0.9, 0.92, 0.88], "mean": 0.9, "std": 0.02},
                          "baseline": {"values": [0.8, 0.81, 0.79], "mean": 0.8, "std": 0.01},
                          "gain": {"values": [0.1, 0.11, 0.09], "mean": 0.1, "std": 0.01}}}
    console = Console(width=300, record=True)
    console.print(cli.result_table(result))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert ("seeds 0, 1, 2 (accuracy): student 90.00 ± 2.00 %, baseline 80.00 ± 1.00 %, gain +10.00 ± 1.00 points "
            "(mean ± std; the student above is seed 0)") in text
    one = Console(width=300, record=True)
    one.print(cli.result_table({**result, "repeats": None}))
    assert "seeds" not in one.export_text()
