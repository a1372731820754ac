"""B4: the API under load on the production stack (uvicorn with N processes, PostgreSQL, Redis),
measured with wrk (1 thread, so it leaves a core to the server): requests/s and p50/p99 at 16 and 64 connections for GET /v1/jobs/{id},
GET /v1/jobs?limit=20 and POST /v1/jobs, with GET /healthz as the ceiling; medians of ROUNDS rounds, the shares
of /healthz the median of each round's own ratio.
Targets: GET job ≥ 50 % of /healthz throughput; p99 < 50 ms at 64 connections."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.stack import API_KEY, stack, tiny_teacher

DURATION_S = 8
ROUNDS = 3
CONNECTIONS = (16, 64)
API_PROCESSES = 2


def _wrk(url: str, connections: int, script: Path | None = None) -> dict:
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{DURATION_S}s", "--latency", "--timeout", "10s",
            "-H", f"Authorization: Bearer {API_KEY}", url]
    if script is not None:
        args[1:1] = ["-s", str(script)]
    done = subprocess.run(args, capture_output=True, text=True)
    out = done.stdout
    if "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or out.strip()}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: _ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "99")}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": requests, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def api_cpu_seconds(supervisor_pid: int) -> float:
    """User + system CPU of the API's worker processes (children of the uvicorn supervisor)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == supervisor_pid:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run() -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("B4 needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="kd-b4-"))
    with stack(production=True, api_workers=API_PROCESSES) as s, s.client() as c:
        arch = tiny_teacher(tmp / "t.safetensors")
        with open(tmp / "t.safetensors", "rb") as f:
            fid = c.post("/v1/files", files={"file": ("t.safetensors", f)}, data={"purpose": "teacher"}).json()["id"]
        body = {"teacher": {"file_id": fid, **arch}, "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [8]}},
                "dataset": {"builtin": "digits"}, "hyperparameters": {"epochs": 1}}
        job = c.post("/v1/jobs", json=body).json()["id"]
        for _ in range(40):
            c.post("/v1/jobs", json=body)
        post = tmp / "post.lua"
        post.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                        f"wrk.body = {json.dumps(json.dumps(body))}\n")
        targets = {"GET /healthz": (f"{s.base_url}/healthz", None),
                   "GET /v1/jobs/{id}": (f"{s.base_url}/v1/jobs/{job}", None),
                   "GET /v1/jobs?limit=20": (f"{s.base_url}/v1/jobs?limit=20", None),
                   "POST /v1/jobs": (f"{s.base_url}/v1/jobs", post)}
        # ROUNDS rounds, the reads interleaved with /healthz in each, so a change of the (shared) machine's
        # load during the run weighs on every route alike; the POSTs last (they add jobs)
        runs: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in CONNECTIONS} for name in targets}
        for group in ([name for name in targets if name.startswith("GET")], ["POST /v1/jobs"]):
            for _ in range(ROUNDS):
                for n in CONNECTIONS:
                    for name in group:
                        url, script = targets[name]
                        cpu = api_cpu_seconds(s.procs[0].pid)
                        cell = _wrk(url, n, script)
                        # API CPU per request: less sensitive to the machine's other load than requests/s
                        cell["api_cpu_ms"] = 1000 * (api_cpu_seconds(s.procs[0].pid) - cpu) / max(cell["requests"], 1)
                        runs[name][n].append(cell)
    results = {name: {n: _median_run(cells[n]) for n in CONNECTIONS} for name, cells in runs.items()}
    shares = {route: {n: statistics.median(r["rps"] / h["rps"] for r, h in zip(runs[route][n], runs["GET /healthz"][n]))
                      for n in CONNECTIONS} for route in ("GET /v1/jobs/{id}", "GET /v1/jobs?limit=20")}
    return {"results": results, "api_processes": API_PROCESSES, "duration_s": DURATION_S, "rounds": ROUNDS,
            "runs": runs, "get_job_share_of_healthz": shares["GET /v1/jobs/{id}"],
            "list_share_of_healthz": shares["GET /v1/jobs?limit=20"]}


def _median_run(cells: list[dict]) -> dict:
    """The median of each figure over the rounds (non-2xx summed, socket errors listed)."""
    return {"rps": statistics.median(c["rps"] for c in cells), "p50_ms": statistics.median(c["p50_ms"] for c in cells),
            "p99_ms": statistics.median(c["p99_ms"] for c in cells), "non_2xx": sum(c["non_2xx"] for c in cells),
            "api_cpu_ms": statistics.median(c["api_cpu_ms"] for c in cells),
            "socket_errors": "; ".join(c["socket_errors"] for c in cells if c["socket_errors"])}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
