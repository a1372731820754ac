"""A job with hyperparameters.repeats on the worker (in-process, PostgreSQL): the result carries
the spread over seeds and matches /openapi.json, the progress bar covers the repeats and never moves
back, every repeat run checkpoints, and the metric rows stay the delivered student's and baseline's."""

from __future__ import annotations

import jsonschema
import pytest
from sqlalchemy import select

from jobs import lifecycle
from jobs.tables import JobEvent
from tests.utils import submit
from worker import runner
from worker.context import WorkerContext
from worker.runner import run_job

pytestmark = pytest.mark.slow


def test_a_job_with_three_seeds(client, settings, digits_teacher, monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_SECONDS", 0.0)  # every step's progress, to check its order
    reported: list[dict] = []
    set_progress = lifecycle.set_progress

    def record(s, *, progress: dict, **kw):
        reported.append(progress)
        return set_progress(s, progress=progress, **kw)

    monkeypatch.setattr(lifecycle, "set_progress", record)
    job_id = submit(client, digits_teacher, epochs=2, batch_size=64, repeats=3, seed=4)["id"]

    assert run_job(job_id, WorkerContext.build(settings)) == "succeeded"

    job = client.get(f"/v1/jobs/{job_id}").json()
    rep = job["result"]["repeats"]
    assert rep["seeds"] == [4, 5, 6] and rep["metric"] == "accuracy"
    assert rep["student"]["values"][0] == job["result"]["student"]["accuracy"]
    assert rep["baseline"]["values"][0] == job["result"]["baseline"]["accuracy"]
    assert rep["gain"]["values"][0] == pytest.approx(job["result"]["distillation_gain"])
    assert len(rep["student"]["values"]) == 3 and rep["student"]["std"] is not None
    components = client.get("/openapi.json").json()["components"]
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/JobOut", "components": components}).validate(job)

    fractions = [p["fraction"] for p in reported]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    in_repeats = [p["fraction"] for p in reported if p["phase"] == "repeats"]
    # 6 runs of equal share (student and baseline per seed): the repeats hold the last 4 of them
    assert in_repeats and min(in_repeats) >= 0.05 + 0.9 * 2 / 6 - 1e-9 and max(in_repeats) <= 0.95 + 1e-9
    # it goes on from where the baseline ended: the first repeat's student moves it within the third run's share
    assert in_repeats[0] < 0.05 + 0.9 * 3 / 6
    assert max(in_repeats) > 0.05 + 0.9 * 5 / 6

    with WorkerContext.build(settings).sessions() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    repeats = [e for e in events if e.type == "repeat"]
    assert [e.data["seed"] for e in repeats] == [5, 6]
    assert repeats[1].data["student"]["accuracy"] == rep["student"]["values"][2]
    checkpointed = {e.data["run"] for e in events if e.type == "checkpoint"}
    assert checkpointed == {"student", "baseline", "student-seed5", "baseline-seed5", "student-seed6",
                            "baseline-seed6"}
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert sorted((m["run"], m["epoch"]) for m in metrics) == [("baseline", 1), ("baseline", 2), ("student", 1),
                                                              ("student", 2)]
    assert "3 seeds" in client.get(f"/v1/jobs/{job_id}/report").text
