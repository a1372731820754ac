"""Thin tasks: take an id, call one function."""

from __future__ import annotations

from jobs.routing import RUN_JOB_TASK
from worker.celery_app import app
from worker.runner import run_job as _run_job


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    _run_job(job_id)
