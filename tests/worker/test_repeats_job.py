"""A job with hyperparameters.repeats on the worker (in-process, PostgreSQL): the result carries
the spread over seeds and matches /openapi.json, the progress bar covers the repeats and never moves
back, every repeat run checkpoints to the store without an event per epoch, and the metric rows stay the delivered student's and baseline's."""

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
    fence = lifecycle.fence

    def record_fence(s, *, progress: dict | None = None, **kw):  # a transaction's progress goes with its fence
        if progress is not None:
            reported.append(progress)
        return fence(s, progress=progress, **kw)

    monkeypatch.setattr(lifecycle, "fence", record_fence)
    # every fraction the bar computes, with the run it was computed in (reports in between are coalesced)
    computed: list[tuple[str, str, float]] = []
    fraction = runner.JobRun._fraction

    def record_fraction(self, *args):
        value = fraction(self, *args)
        computed.append((self.phase, self.current_run, value))
        return value

    monkeypatch.setattr(runner.JobRun, "_fraction", record_fraction)
    job_id = submit(client, digits_teacher, epochs=2, batch_size=64, repeats=3, seed=4)["id"]

    ctx = WorkerContext.build(settings)
    assert run_job(job_id, ctx) == "succeeded"

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
    # 6 runs of equal share (student and baseline per seed) between 5 % and 95 %: the repeats hold the last 4,
    # in order, and the phase starts where the baseline ended
    share = {"student-seed5": 2, "baseline-seed5": 3, "student-seed6": 4, "baseline-seed6": 5}
    in_repeats = [(run, value) for phase, run, value in computed if phase == "repeats"]
    assert in_repeats[0] == ("baseline", pytest.approx(0.05 + 0.9 * 2 / 6))
    for run, value in in_repeats[1:]:
        assert 0.05 + 0.9 * share[run] / 6 - 1e-9 <= value <= 0.05 + 0.9 * (share[run] + 1) / 6 + 1e-9, (run, value)
    assert {run for run, _ in in_repeats[1:]} == set(share)

    with ctx.sessions() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    repeats = [e for e in events if e.type == "repeat"]
    assert [e.data["seed"] for e in repeats] == [5, 6]
    assert repeats[1].data["student"]["accuracy"] == rep["student"]["values"][2]
    # every run checkpoints to the store (a resumed attempt finds them there); only the delivered
    # student's and the baseline's checkpoints are announced as events
    assert {e.data["run"] for e in events if e.type == "checkpoint"} == {"student", "baseline"}
    stored = {key.split("/")[3] for key in ctx.store.list_keys(f"jobs/{job_id}/checkpoints")}
    assert stored == {"student", "baseline", "student-seed5", "baseline-seed5", "student-seed6", "baseline-seed6"}
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert sorted((m["run"], m["epoch"]) for m in metrics) == [("baseline", 1), ("baseline", 2), ("student", 1),
                                                              ("student", 2)]
    assert "3 seeds" in client.get(f"/v1/jobs/{job_id}/report").text
