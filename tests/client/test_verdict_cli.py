"""What `kd jobs get`, `kd jobs watch` and `kd distill` say about the verdict's uncertainty
(result.comparison) and a suspect result (result.warnings), and the level `kd jobs events` shows,
against a FakeService (tests/client/fake_service.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kdclient import cli
from kdclient.models import Event
from tests.client.fake_service import FakeService

runner = CliRunner()

RESULT = {
    "evaluated_on": "test", "num_eval_samples": 359, "teacher": {"accuracy": 0.97, "parameters": 9_610},
    "student": {"accuracy": 0.9443, "agreement": 0.95, "parameters": 1_210},
    "baseline": {"accuracy": 0.9164}, "distillation_gain": 0.9443 - 0.9164, "compression": 7.9, "speedup": 3.1,
    "comparison": {"test": "mcnemar_exact", "alpha": 0.05, "rows": 359, "student_only_right": 21,
                   "baseline_only_right": 11, "p_value": 0.1102, "verdict": "not distinguishable"},
    "warnings": [{"code": "diverged", "model": "baseline", "message": "the baseline's training loss diverged"}],
}


@pytest.fixture
def service(monkeypatch) -> FakeService:
    fake = FakeService(job_result=RESULT)
    monkeypatch.setattr(cli, "make_client", lambda url, key: fake.client())
    return fake


def test_jobs_get_says_not_distinguishable_with_the_p_value_and_the_warnings(service):
    service.job("job_1", "succeeded", {"baseline": True})
    out = runner.invoke(cli.app, ["jobs", "get", "job_1"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())  # rich wraps the caption
    assert "student vs baseline: not distinguishable (p = 0.11;" in text
    assert "21 rows only the student got right, 11 only the baseline" in text
    assert "warning: the baseline's training loss diverged" in text


def test_distill_and_watch_print_the_same_comparison(service, tmp_path):
    teacher = tmp_path / "teacher.onnx"
    teacher.write_bytes(b"x")
    out = runner.invoke(cli.app, ["distill", "--teacher", str(teacher), "--builtin", "digits", "--poll", "0.1",
                                  "-o", str(tmp_path / "student.safetensors")])
    assert out.exit_code == 0, out.output
    assert "not distinguishable (p = 0.11;" in " ".join(out.stdout.split())
    watched = runner.invoke(cli.app, ["jobs", "watch", "job_1", "--poll", "0.1"])
    assert "not distinguishable (p = 0.11;" in " ".join(watched.stdout.split())


def test_a_significant_result_and_a_result_stored_before_the_comparison():
    from rich.console import Console

    better = {**RESULT, "comparison": {**RESULT["comparison"], "p_value": 0.0001, "verdict": "better"},
              "warnings": []}
    console = Console(width=300, record=True)
    console.print(cli.result_table(better))
    assert "student vs baseline: better (p = 0.0001;" in console.export_text()
    old = {k: v for k, v in RESULT.items() if k not in ("comparison", "warnings")}
    console = Console(width=300, record=True)
    console.print(cli.result_table(old))
    text = console.export_text()
    assert "distillation gain +2.8 points" in text and "student vs baseline" not in text and "warning" not in text


def test_events_carry_their_level_and_the_event_log_marks_what_is_not_info(service, monkeypatch):
    assert Event.from_dict({"id": 1, "type": "status"}).level == "info"  # a server without levels
    assert Event.from_dict({"id": 2, "type": "status", "level": "error"}).level == "error"
    events = [Event.from_dict({"id": 1, "type": "phase", "message": "phase training", "level": "info"}),
              Event.from_dict({"id": 2, "type": "warning", "message": "near chance", "level": "warning"}),
              Event.from_dict({"id": 3, "type": "status", "message": "the loss became nan", "level": "error"})]
    monkeypatch.setattr(type(service.client()), "events", lambda self, job_id, after=0: events)
    out = runner.invoke(cli.app, ["jobs", "events", "job_1"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].endswith("phase        phase training")
    assert lines[1].endswith("WARNING: near chance") and lines[2].endswith("ERROR: the loss became nan")
