"""Thin tasks: take an id, call one function."""

from __future__ import annotations

from worker.celery_app import app
from worker.runner import run_job as _run_job


@app.task(name="kd.run_job", ignore_result=True)
def run_job(job_id: str) -> None:
    _run_job(job_id)
