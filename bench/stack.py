"""A throwaway service stack for the benchmarks: a fresh PostgreSQL database (or SQLite), a Redis
database (or the SQLite broker), the API under uvicorn and N worker processes, all on this machine."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import redis
from sqlalchemy import text

from jobs.db import make_engine
from jobs.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_BENCH_DB = 12
API_KEY = "kd_bench_" + "b" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, base_url: str, env: dict, data_dir: Path):
        self.base_url, self.env, self.data_dir = base_url, env, data_dir
        self.procs: list[subprocess.Popen] = []

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)

    def start(self, module: str, **extra_env: str) -> subprocess.Popen:
        log = open(self.data_dir / f"{module}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**self.env, **extra_env},
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_workers(self, n: int) -> None:
        logs = []
        for _ in range(n):
            self.start("worker", OMP_NUM_THREADS="1")  # one torch thread per process: N processes share the cores
            logs.append(self.data_dir / f"worker-{len(self.procs) - 1}.log")
        deadline = time.monotonic() + 120
        while not all("ready." in p.read_text(errors="replace") for p in logs):
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            time.sleep(0.3)


@contextmanager
def stack(*, production: bool = True, api_workers: int = 1, workers: int = 0,
          extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """`extra_env`: more KD_ settings for every process of the stack."""
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    admin = None
    if production:
        admin = make_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
        name = f"kd_bench_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        db, broker = f"{PG_SERVER}/{name}", f"redis://127.0.0.1:6379/{REDIS_BENCH_DB}"
        redis.Redis.from_url(broker).flushdb()
    else:
        db, broker = f"sqlite:///{tmp}/kd.sqlite3", f"sqla+sqlite:///{tmp}/broker.sqlite3"
    upgrade(db)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env.update(KD_DATABASE_URL=db, KD_BROKER_URL=broker, KD_DATA_DIR=str(tmp), KD_BOOTSTRAP_API_KEY=API_KEY,
               KD_API_PORT=str(port), KD_API_WORKERS=str(api_workers), KD_HEARTBEAT_SECONDS="1",
               KD_QUOTA_CONCURRENT_JOBS="100000", KD_QUOTA_STORED_BYTES=str(1 << 40), PYTHONPATH=str(ROOT),
               **(extra_env or {}))
    s = Stack(f"http://127.0.0.1:{port}", env, tmp)
    try:
        s.start("api")
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{s.base_url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not start")
            time.sleep(0.3)
        if workers:
            s.start_workers(workers)
        yield s
    finally:
        for p in s.procs:
            p.terminate()
        for p in s.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def tiny_teacher(path: Path) -> dict:
    """A small digits teacher saved as safetensors; returns the job's teacher arch fields."""
    import torch
    from safetensors.torch import save_file

    from kdcore.data import load_builtin
    from kdcore.models import build_model

    torch.manual_seed(0)
    train = load_builtin("digits")["train"]
    model = build_model("mlp", {"hidden_sizes": [64]}, input_shape=(64,), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    save_file(model.state_dict(), str(path))
    return {"arch": "mlp", "arch_params": {"hidden_sizes": [64]}}
