"""What `kd jobs watch` and `kd jobs get` say while a job waits and once it has ended: the queued job's
waiting reason (from the real API: no worker serves a cuda queue here), and the student's numbers
under the final status, not those of the baseline that trained last (FakeService with epoch events)."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from kdclient import cli
from tests.client.fake_service import FakeService

EPOCHS = [  # the student trains first, then the baseline: the last epoch event is the baseline's
    {"run": "student", "epoch": 2, "epochs": 2, "train_loss": 0.1234, "val_accuracy": 0.951},
    {"run": "baseline", "epoch": 2, "epochs": 2, "train_loss": 0.9876, "val_accuracy": 0.612},
]


class WithEpochEvents(FakeService):
    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/events"):
            after = int(request.url.params.get("after", 0))
            events = [{"id": i + 1, "type": "epoch", "message": f"{d['run']} epoch {d['epoch']}", "data": d,
                       "attempt": 1, "level": "info", "created_at": "2026-01-01T00:00:00+00:00"}
                      for i, d in enumerate(EPOCHS)]
            return httpx.Response(200, json={"data": [e for e in events if e["id"] > after], "has_more": False})
        return super().handler(request)


def test_watch_shows_the_students_numbers_under_the_final_status(monkeypatch):
    fake = WithEpochEvents(job_result={"student": {"accuracy": 0.95}, "baseline": {"accuracy": 0.61}})
    fake.job("job_1", "succeeded", {"baseline": True})
    monkeypatch.setattr(cli, "make_client", lambda url, key: fake.client())
    out = CliRunner().invoke(cli.app, ["jobs", "watch", "job_1", "--poll", "0.1"])
    assert out.exit_code == 0, out.output
    final = [line for line in out.stderr.splitlines() if line.startswith("job_1 succeeded")]
    assert final == ["job_1 succeeded · epoch 2/2 · loss 0.1234 · acc 95.1%"], out.stderr


def test_get_and_watch_say_why_a_queued_job_waits(kd_cli, teacher, monkeypatch):
    """A cuda job on a service whose only workers (none here) serve kd.cpu: GET job carries a
    waiting_reason; `kd jobs get` shows it with the queue, and `kd jobs watch` prints it once."""
    file, arch = teacher
    created = kd_cli("jobs", "create", "-q", "--teacher-file", file.id, "--teacher-arch", arch["arch"],
                     "--teacher-params", json.dumps(arch["arch_params"]), "--builtin", "digits",
                     "--student", "mlp:hidden_sizes=16", "--resources-device", "cuda", "--gpus", "2")
    assert created.exit_code == 0, created.output
    job_id = created.stdout.strip()
    got = kd_cli("jobs", "get", job_id)
    assert got.exit_code == 0, got.output
    text = " ".join(got.stdout.split())
    assert "queue kd.cuda.2, 0 older job(s) ahead" in text
    assert "waiting no live worker serves device=cuda gpus=2 (queue kd.cuda.2)" in text

    polls = {"n": 0}
    real_wait = cli.Client.wait

    def wait_three_polls_then_cancel(self, job_id, *, poll=1.0, timeout=None, on_update=None):
        def counting(job):
            polls["n"] += 1
            if polls["n"] == 3:
                self.cancel_job(job_id)
            on_update(job)
        return real_wait(self, job_id, poll=0.05, timeout=timeout, on_update=counting)

    monkeypatch.setattr(cli.Client, "wait", wait_three_polls_then_cancel)
    watched = kd_cli("jobs", "watch", job_id)
    assert watched.exit_code == 1, watched.output  # cancelled
    assert watched.stderr.count("waiting: no live worker serves device=cuda gpus=2 (queue kd.cuda.2)") == 1
