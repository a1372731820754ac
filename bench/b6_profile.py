"""Where a B6 job's time goes: the B6 job (digits, 1 epoch, no baseline) submitted JOBS times at
once to ONE worker on the production stack, then each job's timeline read back from the database
(its claim, its events, its end; all stamped by the writers' clocks on this machine), and the
jobs/min of a bare Celery task that does nothing on the same broker and settings (the ceiling the
queue allows).

    python -m bench.b6_profile                 # 100 jobs, then the bare-task floor
    python -m bench.b6_profile --pyspy out.txt # and py-spy (`record -f raw`) on the worker meanwhile

Per job, in the worker's order: `between` = this job's claim minus the previous job's end (the
message's ack, the next message's delivery, Celery's dispatch, the claim's transaction); then
claim → `claimed` event (spec read, teacher fetch from the store), and each phase event to the
next, up to `result` → finished (the last fenced transaction). Medians over the jobs after the
first ten (the first job pays one-off costs)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from bench.stack import ROOT, stack, tiny_job
from jobs.db import make_engine

JOBS = 100
SKIP = 10  # the first jobs: warm-up


def _timelines(engine) -> tuple[list[dict], float]:
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, created_at, started_at, finished_at FROM jobs "
                                 "ORDER BY started_at")).all()
        events = conn.execute(text("SELECT job_id, seq, type, data, created_at FROM job_events ORDER BY job_id, seq")).all()
        span = conn.scalar(text("SELECT EXTRACT(EPOCH FROM max(finished_at) - min(created_at)) FROM jobs"))
    by_job = defaultdict(list)
    for job_id, _, type_, data, at in events:
        name = f"phase {data['phase']}" if type_ == "phase" else type_
        by_job[job_id].append((name, at))
    out, prev_end = [], None
    for job_id, created, started, finished in jobs:
        marks = [("claim", started)] + [(n, at) for n, at in by_job[job_id] if n != "status"] + [("finished", finished)]
        steps = {f"{a} -> {b}": (tb - ta).total_seconds() for (a, ta), (b, tb) in zip(marks, marks[1:])}
        row = {"between": None if prev_end is None else (started - prev_end).total_seconds(),
               "claim_to_finished": (finished - started).total_seconds(), **steps}
        out.append(row)
        prev_end = finished
    return out, float(span)


def _summary(rows: list[dict]) -> dict:
    keys: dict[str, list[float]] = defaultdict(list)
    for r in rows[SKIP:]:
        for k, v in r.items():
            if v is not None:
                keys[k].append(v)
    return {k: round(statistics.median(v) * 1e3, 1) for k, v in keys.items()}


def measure_jobs(jobs: int, pyspy: str | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="kd-b6p-"))
    with stack(production=True, workers=1) as s, s.client() as c:
        body = tiny_job(c, tmp)
        spy = None
        if pyspy:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw",
                                    "-o", pyspy, "--pid", str(s.procs[-1].pid), "-d", "600"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: c.post("/v1/jobs", json=body).raise_for_status(), range(jobs)))
        submit_s = time.perf_counter() - t0
        engine = make_engine(s.env["KD_DATABASE_URL"])
        try:
            while True:
                with engine.connect() as conn:
                    done = conn.scalar(text("SELECT count(*) FROM jobs WHERE status IN ('succeeded','failed','cancelled')"))
                if done >= jobs:
                    break
                time.sleep(0.2)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            rows, span = _timelines(engine)
            with engine.connect() as conn:
                statuses = dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
        finally:
            engine.dispose()
    return {"jobs": jobs, "jobs_per_min": 60 * jobs / span, "submit_s": submit_s, "statuses": statuses,
            "median_ms": _summary(rows)}


# --- the floor: a bare task ------------------------------------------------------------------------
FLOOR_APP = '''
import os, time
from celery import Celery, signals
from worker.celery_app import app as real
app = Celery("floor", broker=os.environ["FLOOR_BROKER"])
app.conf.update({k: real.conf[k] for k in ("task_serializer", "accept_content", "task_ignore_result", "task_acks_late",
    "task_reject_on_worker_lost", "worker_prefetch_multiplier", "broker_transport_options", "worker_send_task_events")})
app.conf.task_default_queue = "floor"
@app.task(name="floor.noop", ignore_result=True)
def noop(i):
    if i == -1:
        open(os.environ["FLOOR_DONE"], "w").write(repr(time.time()))
if __name__ == "__main__":
    app.worker_main(["worker", "--loglevel=WARNING", "--pool=solo", "--concurrency=1", "-Q", "floor",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])
'''


def measure_floor(tasks: int) -> dict:
    """jobs/min of a task that does nothing: `tasks` sent at once to one solo worker with the
    worker's Celery settings (late acks, prefetch 1, JSON, Redis)."""
    import redis
    from celery import Celery

    broker = "redis://127.0.0.1:6379/13"
    redis.Redis.from_url(broker).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="kd-floor-"))
    (tmp / "floor_app.py").write_text(FLOOR_APP)
    done = tmp / "done"
    env = {**os.environ, "FLOOR_BROKER": broker, "FLOOR_DONE": str(done),
           "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}", "KD_BROKER_URL": broker}
    proc = subprocess.Popen([sys.executable, str(tmp / "floor_app.py")], cwd=tmp, env=env,
                            stdout=open(tmp / "log", "wb"), stderr=subprocess.STDOUT)
    try:
        sender = Celery("floor", broker=broker)
        sender.send_task("floor.noop", args=[0], queue="floor")  # wait until it is consuming
        while redis.Redis.from_url(broker).llen("floor"):
            time.sleep(0.1)
        time.sleep(0.5)
        t0 = time.time()
        for i in range(tasks - 1):
            sender.send_task("floor.noop", args=[i], queue="floor")
        sender.send_task("floor.noop", args=[-1], queue="floor")
        while not done.exists():
            time.sleep(0.05)
        time.sleep(0.05)
        span = float(done.read_text()) - t0
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        redis.Redis.from_url(broker).flushdb()
    return {"tasks": tasks, "jobs_per_min": 60 * tasks / span, "per_task_ms": 1e3 * span / tasks}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--floor-tasks", type=int, default=1000)
    parser.add_argument("--pyspy", help="write py-spy's raw samples of the worker here")
    parser.add_argument("--no-jobs", action="store_true", help="only the floor")
    args = parser.parse_args()
    out = {}
    if not args.no_jobs:
        out["b6_one_worker"] = measure_jobs(args.jobs, args.pyspy)
    out["bare_task_floor"] = measure_floor(args.floor_tasks)
    if "b6_one_worker" in out:
        out["b6_over_floor"] = out["b6_one_worker"]["jobs_per_min"] / out["bare_task_floor"]["jobs_per_min"]
    print(json.dumps(out, indent=2))
