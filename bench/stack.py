"""A throwaway service stack for the benchmarks: a fresh PostgreSQL database (or SQLite), a Redis
database (or the SQLite broker), the API under uvicorn and N worker processes, all on this machine.
The processes are started, waited for and stopped by harness/services.py, the one harness the tests
use as well; this module adds the benchmarks' settings (big quotas, 1 s heartbeats) and their job."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import redis

from harness.services import PG_SERVER, REDIS_SERVER, ROOT, Stack, fresh_database, free_port, service_env
from harness.teachers import digits_teacher_file
from jobs.migrate import upgrade

__all__ = ["API_KEY", "PG_SERVER", "ROOT", "Stack", "free_port", "stack", "tiny_job", "tiny_teacher"]

REDIS_BENCH_DB = 12  # tests use 1..11 (tests/utils.py), b6_profile 13
API_KEY = "kd_bench_" + "b" * 40


@contextmanager
def stack(*, production: bool = True, api_workers: int = 1, workers: int = 0,
          extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The API (ready: /readyz answers 200), then `workers` workers; `extra_env`: more KD_ settings
    for every process of the stack. `Stack.procs[0]` is the API, the workers follow."""
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    with ExitStack() as cleanup:
        if production:
            db, broker = cleanup.enter_context(fresh_database("kd_bench")), f"{REDIS_SERVER}/{REDIS_BENCH_DB}"
            redis.Redis.from_url(broker).flushdb()
        else:
            db, broker = f"sqlite:///{tmp}/kd.sqlite3", f"sqla+sqlite:///{tmp}/broker.sqlite3"
            upgrade(db)
        env = service_env(database_url=db, broker_url=broker, data_dir=tmp, api_key=API_KEY,
                          KD_API_WORKERS=str(api_workers), KD_HEARTBEAT_SECONDS="1", KD_QUOTA_CONCURRENT_JOBS="100000",
                          KD_QUOTA_STORED_BYTES=str(1 << 40), **(extra_env or {}))
        # the API with the machine's torch threads, as deployed; each worker with one (N processes share the cores)
        env.pop("OMP_NUM_THREADS")
        env.update({k: v for k, v in os.environ.items() if k == "OMP_NUM_THREADS"})
        s = Stack(env, tmp, api_key=API_KEY)
        cleanup.callback(s.stop)
        s.start_api()
        s.wait_healthy("/readyz")
        if workers:
            s.start_workers(workers, OMP_NUM_THREADS="1")
        yield s


def tiny_teacher(path: Path) -> dict:
    """A small digits teacher saved as safetensors; returns the job's teacher arch fields."""
    return digits_teacher_file(path, [64], steps=40)


def tiny_job(client: httpx.Client, tmp: Path, *, baseline: bool = False) -> dict:
    """Uploads a tiny teacher; the benchmarks' job body with it: an mlp [8] student, 1 epoch of digits."""
    arch = tiny_teacher(tmp / "t.safetensors")
    with open(tmp / "t.safetensors", "rb") as f:
        fid = client.post("/v1/files", files={"file": ("t.safetensors", f)}, data={"purpose": "teacher"}).json()["id"]
    return {"teacher": {"file_id": fid, **arch}, "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [8]}},
            "dataset": {"builtin": "digits"}, "hyperparameters": {"epochs": 1}, "baseline": baseline}
