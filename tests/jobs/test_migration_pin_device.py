"""Revision 0007 rewrites the specs of jobs submitted before the API pinned `device: auto`, on both
backends, page by page, leaving every other job and field as it was."""

from __future__ import annotations

from sqlalchemy import select

from jobs import jobs_repo, tenants_repo
from jobs.db import make_engine, make_sessionmaker
from jobs.migrate import downgrade, upgrade
from jobs.tables import Job


def _spec(device: str, resources: dict | None) -> dict:
    spec = {"teacher": {"file_id": "file_x"}, "hyperparameters": {"device": device, "epochs": 3}}
    if resources is not None:
        spec["resources"] = resources
    return spec


def test_0007_pins_auto_to_the_jobs_resources_device(empty_database_url):
    upgrade(empty_database_url, "0006_job_indexes")
    engine = make_engine(empty_database_url)
    sessions = make_sessionmaker(engine)
    cases = {"auto-cpu": _spec("auto", {"device": "cpu"}), "auto-cuda": _spec("auto", {"device": "cuda", "gpus": 2}),
             "auto-none": _spec("auto", None), "cpu": _spec("cpu", {"device": "cuda"})}
    cases |= {f"bulk-{i}": _spec("auto", {"device": "cuda"}) for i in range(600)}  # more than one page of 500
    try:
        with sessions() as s:
            tenant = tenants_repo.get_or_create(s, name="t")
            ids = {name: jobs_repo.create(s, tenant_id=tenant.id, spec=spec, max_attempts=3).id
                   for name, spec in cases.items()}
            s.commit()
        upgrade(empty_database_url)
        with sessions() as s:
            specs = {job.id: job.spec for job in s.scalars(select(Job))}
        device = {name: specs[job_id]["hyperparameters"]["device"] for name, job_id in ids.items()}
        assert device["auto-cpu"] == "cpu" and device["auto-cuda"] == "cuda" and device["auto-none"] == "cpu"
        assert device["cpu"] == "cpu"  # an explicit choice is never touched
        assert all(device[f"bulk-{i}"] == "cuda" for i in range(600))
        assert specs[ids["auto-cuda"]] == {**cases["auto-cuda"],
                                           "hyperparameters": {"device": "cuda", "epochs": 3}}
        downgrade(empty_database_url, "0006_job_indexes")  # keeps the pinned values
        with sessions() as s:
            assert s.get(Job, ids["auto-cuda"]).spec["hyperparameters"]["device"] == "cuda"
    finally:
        engine.dispose()
