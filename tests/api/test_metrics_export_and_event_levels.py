"""GET /v1/jobs/{id}/metrics?format=csv (one row per (run, epoch), a header row, tenant-filtered like
the JSON route) and the level every event carries (JSON page and SSE stream), without a worker: the
rows are written through jobs.lifecycle as a worker writes them."""

from __future__ import annotations

import csv
import io
import json

import pytest

from jobs import lifecycle
from tests.factories import digits_job
from tests.utils import problem, upload

SSE = {"Accept": "text/event-stream"}


def epoch_values(run: str, epoch: int, **extra) -> dict:
    """What the worker stores for an epoch (kdcore.trainer.EpochMetrics.to_dict())."""
    return {"run": run, "epoch": epoch, "epochs": 2, "train_loss": 1.0 / epoch, "train_hard": 0.5 / epoch,
            "train_soft": 0.25 / epoch, "train_accuracy": 0.5 + epoch / 10, "val_accuracy": None if run == "baseline"
            and epoch == 1 else 0.6 + epoch / 10, "val_agreement": 0.7, "lr": 0.01, "seconds": 1.5, "point": None,
            **extra}


@pytest.fixture
def job(client, digits_teacher) -> dict:
    """A claimed job with two epochs of each run, a warning event, then failed (an error event)."""
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    job = client.post("/v1/jobs", json=digits_job(teacher)).json()
    with client.app.state.sessionmaker() as s:
        attempt = lifecycle.claim(s, job_id=job["id"], lease_seconds=60, worker="test")
        for run in ("student", "baseline"):
            for epoch in (1, 2):
                extra = {"new_metric": 7} if (run, epoch) == ("student", 2) else {}
                assert lifecycle.add_metric(s, job_id=job["id"], attempt=attempt, run=run, epoch=epoch,
                                            values=epoch_values(run, epoch, **extra))
        lifecycle.add_event(s, job_id=job["id"], attempt=attempt, type="phase", message="phase training",
                            data={"phase": "training"})
        lifecycle.add_event(s, job_id=job["id"], attempt=attempt, type="warning", level="warning",
                            message="the student's accuracy is near chance", data={"code": "near_chance"})
        lifecycle.fail(s, job_id=job["id"], attempt=attempt, code="diverged", message="the loss became nan")
        s.commit()
    return job


def read_csv(resp) -> list[dict]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(resp.text)))


def test_metrics_as_csv_one_row_per_run_and_epoch_with_a_header(client, job):
    resp = client.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"})
    rows = read_csv(resp)
    assert resp.headers["content-disposition"] == f'attachment; filename="{job["id"]}-metrics.csv"'
    header = resp.text.splitlines()[0].split(",")
    assert header == ["run", "epoch", "epochs", "train_loss", "train_hard", "train_soft", "train_accuracy",
                      "val_accuracy", "val_agreement", "lr", "seconds", "point", "new_metric"]
    as_json = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    assert [(r["run"], int(r["epoch"])) for r in rows] == [(m["run"], m["epoch"]) for m in as_json] == [
        ("baseline", 1), ("baseline", 2), ("student", 1), ("student", 2)]
    for row, m in zip(rows, as_json):  # the same numbers, exactly (repr of the float)
        for key in ("train_loss", "train_hard", "train_accuracy", "lr", "seconds", "val_agreement"):
            assert float(row[key]) == m["values"][key]
    assert rows[0]["val_accuracy"] == "" and rows[0]["point"] == ""  # None is an empty cell
    assert rows[3]["new_metric"] == "7" and rows[2]["new_metric"] == ""  # a key only some rows have


def test_metrics_csv_of_a_job_without_metrics_is_the_header_alone(client, digits_teacher):
    teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
    job = client.post("/v1/jobs", json={"teacher": {"file_id": teacher, "arch": "mlp",
                                                    "arch_params": {"hidden_sizes": [128]}}}).json()
    resp = client.get(f"/v1/jobs/{job['id']}/metrics?format=csv")
    assert read_csv(resp) == []
    assert resp.text.splitlines() == ["run,epoch,epochs,train_loss,train_hard,train_soft,train_accuracy,"
                                      "val_accuracy,val_agreement,lr,seconds,point"]


def test_metrics_csv_is_tenant_filtered_and_other_formats_are_refused(client, job, other_tenant_headers):
    theirs = client.get(f"/v1/jobs/{job['id']}/metrics?format=csv", headers=other_tenant_headers)
    unknown = client.get("/v1/jobs/job_000000000000000000000000/metrics?format=csv")
    assert problem(theirs, 404)["detail"] == problem(unknown, 404)["detail"].replace(
        "job_000000000000000000000000", job["id"])
    assert problem(client.get(f"/v1/jobs/{job['id']}/metrics?format=xml"), 422)
    assert client.get(f"/v1/jobs/{job['id']}/metrics?format=json").json()["data"]


def test_the_openapi_document_declares_the_csv(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/metrics"]["get"]
    assert "text/csv" in operation["responses"]["200"]["content"]
    assert [p for p in operation["parameters"] if p["name"] == "format"][0]["schema"]["enum"] == ["json", "csv"]
    event = client.get("/openapi.json").json()["components"]["schemas"]["EventOut"]["properties"]["level"]
    assert event["enum"] == ["info", "warning", "error"]


def test_every_event_has_a_level_in_the_page_and_the_stream(client, job):
    page = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [(e["type"], (e["data"] or {}).get("status"), e["level"]) for e in page] == [
        ("status", "running", "info"), ("phase", None, "info"), ("warning", None, "warning"),
        ("status", "failed", "error")]
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=SSE) as resp:
        body = resp.read().decode()
    streamed = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    assert streamed == page and [e["level"] for e in streamed][-2:] == ["warning", "error"]


def test_an_unknown_level_is_refused_by_the_state_machine(client, job):
    with client.app.state.sessionmaker() as s:
        with pytest.raises(ValueError):
            lifecycle.add_event(s, job_id=job["id"], attempt=1, type="log", message="x", level="fatal")
