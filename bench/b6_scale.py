"""B6: scale-out. JOBS tiny jobs (digits, 1 epoch, no baseline) submitted at once to 1, 2 and 4
worker processes on the production stack (PostgreSQL, Redis): jobs/min from the first submission to
the last job finished, the worker processes' CPU time per job (which the machine's other load
moves far less than the wall time), whether every job succeeded, whether any ran twice (from the database: the
job's attempt counter, the attempts its events were written under, its metric rows), and the
throughput relative to 1 worker. Before them, the floor: jobs/min of a Celery task that does nothing
on the same broker with the worker's settings, 1 worker (bench/b6_profile.py), and each figure's
share of it, which moves less with the machine's load than the figure itself.

    python -m bench.b6_scale            # 200 jobs per worker count
    python -m bench.b6_scale --jobs 50  # a quicker look

The bench tenant's quota is raised through settings (bench/stack.py: KD_QUOTA_CONCURRENT_JOBS),
not in code. Each worker process runs one job at a time with one torch thread."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from bench.b6_profile import measure_floor
from bench.stack import stack, tiny_job
from jobs.db import make_engine

JOBS = 200
WORKER_COUNTS = (1, 2, 4)
SUBMIT_THREADS = 8
TIMEOUT_S = 1800


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), its threads included."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(workers: int, jobs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="kd-b6-"))
    with stack(production=True, workers=workers) as s, s.client() as c:
        body = tiny_job(c, tmp)

        def submit(_: int) -> str:
            r = c.post("/v1/jobs", json=body)
            if r.status_code != 201:
                raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text}")
            return r.json()["id"]

        workers_pids = [p.pid for p in s.procs[1:]]  # s.procs[0] is the API
        cpu0 = sum(_cpu_seconds(pid) for pid in workers_pids)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            ids = list(pool.map(submit, range(jobs)))
        submitted_s = time.perf_counter() - t0
        engine = make_engine(s.env["KD_DATABASE_URL"])
        try:
            while True:
                with engine.connect() as conn:
                    done = conn.scalar(text(
                        "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"))
                if done >= jobs:
                    break
                if time.perf_counter() - t0 > TIMEOUT_S:
                    raise TimeoutError(f"{done} of {jobs} jobs finished after {TIMEOUT_S} s")
                time.sleep(0.2)
            worker_cpu_s = sum(_cpu_seconds(pid) for pid in workers_pids) - cpu0
            with engine.connect() as conn:
                # The wall time ends when the last job finished (database clock), not at our last poll.
                span = conn.scalar(text("SELECT EXTRACT(EPOCH FROM max(finished_at) - min(created_at)) FROM jobs"))
                statuses = dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
                reattempted = conn.scalar(text("SELECT count(*) FROM jobs WHERE attempt <> 1"))
                multi_attempt_events = conn.scalar(text(
                    "SELECT count(*) FROM (SELECT job_id FROM job_events GROUP BY job_id "
                    "HAVING count(DISTINCT attempt) > 1) AS t"))
                metric_rows = dict(conn.execute(text(
                    "SELECT n, count(*) FROM (SELECT j.id, count(m.id) AS n FROM jobs j "
                    "LEFT JOIN job_metrics m ON m.job_id = j.id GROUP BY j.id) AS t GROUP BY n")).all())
                per_worker = sorted(n for (n,) in conn.execute(text(
                    "SELECT count(*) FROM jobs GROUP BY worker")).all())
        finally:
            engine.dispose()
    assert len(set(ids)) == jobs
    return {"workers": workers, "jobs": jobs, "wall_s": float(span), "jobs_per_min": 60 * jobs / float(span),
            "submit_s": submitted_s, "worker_cpu_ms_per_job": 1e3 * worker_cpu_s / jobs, "statuses": statuses, "all_succeeded": statuses.get("succeeded", 0) == jobs,
            "jobs_with_attempt_not_1": reattempted, "jobs_with_events_from_2_attempts": multi_attempt_events,
            "jobs_by_metric_row_count": {str(k): v for k, v in metric_rows.items()},
            "jobs_per_worker": per_worker}


def run(jobs: int = JOBS, worker_counts: tuple[int, ...] = WORKER_COUNTS) -> dict:
    floor = measure_floor(1000)
    results = [_measure(n, jobs) for n in worker_counts]
    base = results[0]["jobs_per_min"]
    for r in results:
        r["speedup_vs_1"] = r["jobs_per_min"] / base
        r["share_of_bare_task_floor"] = r["jobs_per_min"] / floor["jobs_per_min"]
        r["none_ran_twice"] = (r["jobs_with_attempt_not_1"] == 0 and r["jobs_with_events_from_2_attempts"] == 0
                               and r["jobs_by_metric_row_count"] == {"1": jobs})
    return {"jobs": jobs, "bare_task_floor": floor, "results": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKER_COUNTS),
                        help="worker counts to measure, the first is the base of the speed-ups")
    args = parser.parse_args()
    print(json.dumps(run(args.jobs, tuple(args.workers)), indent=2))
