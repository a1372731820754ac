"""Many concurrent requests against a small connection pool: every one is answered.

Before the fix (bench/RESULTS.md, B4), a burst deadlocked: POST /v1/jobs waited for a pooled
connection on the event loop, and sync routes held a connection while waiting for a worker thread,
so nothing moved until the pool's timeout and the requests failed with 500."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from api.app import create_app
from jobs.db import make_engine, make_sessionmaker
from tests.factories import digits_job, mlp
from tests.utils import API_KEY, upload

POOL_SIZE, REQUESTS = 2, 48


def test_a_burst_larger_than_the_pool_is_served(settings, digits_teacher):
    settings = settings.model_copy(update={"quota_concurrent_jobs": 1000})
    app = create_app(settings)
    app.state.engine.dispose()
    # A pool much smaller than the burst, with a short timeout so a deadlock shows as 500s, not a hang.
    app.state.engine = make_engine(settings.db_url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=3)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        teacher = upload(client, digits_teacher[0], "teacher").json()["id"]
        body = digits_job(teacher, arch=digits_teacher[1], student=mlp(8), hyperparameters={"epochs": 1},
                          baseline=False)
        job = client.post("/v1/jobs", json=body).json()["id"]

        def one(i: int) -> int:
            if i % 3 == 0:
                return client.post("/v1/jobs", json=body).status_code
            if i % 3 == 1:
                return client.get(f"/v1/jobs/{job}").status_code
            return client.get("/v1/jobs?limit=20").status_code

        with ThreadPoolExecutor(REQUESTS) as pool:
            codes = list(pool.map(one, range(REQUESTS)))
        assert sorted(set(codes)) == [200, 201], codes
        listed = client.get("/v1/jobs?limit=100").json()["data"]
        assert len(listed) == 1 + REQUESTS // 3  # every POST created its job, once
