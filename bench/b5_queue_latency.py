"""B5: queue latency. Submit → running and running → first metric row, median and p95 over
JOBS jobs submitted one at a time to an idle worker, on Redis and on the embedded SQLite broker.
Target: median submit → running < 0.5 s on Redis."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.stack import stack, tiny_job

JOBS = 20


def _quantiles(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_s": statistics.median(values), "p95_s": values[min(len(values) - 1, int(0.95 * len(values)))]}


def _measure(production: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="kd-b5-"))
    with stack(production=production, workers=1) as s, s.client() as c:
        body = tiny_job(c, tmp)
        to_running, to_metric = [], []
        for _ in range(JOBS):
            t0 = time.perf_counter()
            job = c.post("/v1/jobs", json=body).json()["id"]
            running = metric = None
            while True:
                state = c.get(f"/v1/jobs/{job}").json()
                now = time.perf_counter()
                if running is None and state["status"] != "queued":
                    running = now
                if metric is None and c.get(f"/v1/jobs/{job}/metrics").json()["data"]:
                    metric = now
                if state["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.02)
            to_running.append(running - t0)
            if metric is not None:
                to_metric.append(metric - running)
    return {"submit_to_running": _quantiles(to_running), "running_to_first_metric": _quantiles(to_metric)}


def run() -> dict:
    return {"jobs": JOBS, "redis": _measure(True), "embedded": _measure(False),
            "note": "polled every 20 ms, so each figure carries up to ~20 ms of polling delay"}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
