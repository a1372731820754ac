"""The service's processes on this machine, for the tests and the benchmarks: a fresh migrated
PostgreSQL database, the API (`python -m api`, uvicorn) and Celery workers (`python -m worker`) started
with an environment of their own (`service_env`), waited for (`wait_until`, `wait_healthy`,
`Proc.wait_for_output`) and stopped. `Stack` holds one run's processes; `running_stack` starts one and
stops it on the way out. PostgreSQL and Redis themselves are the machine's (127.0.0.1:5432, :6379)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
from sqlalchemy import text

from jobs.db import make_engine
from jobs.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_SERVER = "redis://127.0.0.1:6379"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_database(prefix: str, *, migrate: bool = True, server: str = PG_SERVER) -> Iterator[str]:
    """A new database named `<prefix>_<random>` on the PostgreSQL `server`, migrated with Alembic
    unless `migrate` is false; its URL. Dropped (connections and all) on the way out."""
    admin = make_engine(f"{server}/test", isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = f"{server}/{name}"
            if migrate:
                upgrade(url)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def service_env(*, database_url: str, broker_url: str, data_dir: Path, api_key: str | None, **extra: str) -> dict:
    """Environment for an API or worker subprocess: the machine's without its KD_ settings, plus
    these (`api_key`, unless None, as the API's bootstrap key). One torch thread per process (a few
    processes share a few cores); `extra` may override it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env.update({"KD_DATABASE_URL": database_url, "KD_BROKER_URL": broker_url, "KD_DATA_DIR": str(data_dir),
                "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if api_key is not None:
        env["KD_BOOTSTRAP_API_KEY"] = api_key
    env.update(extra)
    return env


class Proc:
    """A subprocess run from the checkout whose output goes to a log file (read on failure), or
    nowhere where `log_path` is None (a server under load whose access log would only cost)."""

    def __init__(self, args: list[str], env: dict, log_path: Path | None, *, name: str = ""):
        self.name = name or (Path(log_path).stem if log_path else Path(args[-1]).name)
        self.log_path = log_path
        self.log = open(log_path if log_path else os.devnull, "wb")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for_output(self, needle: str, timeout: float = 60) -> None:
        wait_until(lambda: needle in self.output(), what=f"{needle!r} in {self.name}'s output", timeout=timeout,
                   proc=self)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def stop(self, sig_timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `sig_timeout` seconds."""
        self.terminate()
        try:
            self.popen.wait(timeout=sig_timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.log.close()


def wait_until(ready: Callable[[], bool], *, what: str, timeout: float = 60, proc: Proc | None = None,
               interval: float = 0.2) -> None:
    """Return once `ready()` is true; TimeoutError after `timeout` seconds, RuntimeError at once if
    `proc` exits first (each with the end of its log)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before {what}:\n"
                               f"{proc.output()[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s" + (f":\n{proc.output()[-4000:]}" if proc else ""))
        time.sleep(interval)


def answers(url: str, status: int | None = 200) -> bool:
    """Whether a GET of `url` answers (with `status`, unless that is None)."""
    try:
        got = httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return False
    return status is None or got == status


def wait_healthy(base_url: str, proc: Proc | None = None, *, path: str = "/healthz", timeout: float = 60) -> None:
    """Return once the server at `base_url` answers `path` with 200 (the API's /healthz unless told)."""
    wait_until(lambda: answers(base_url + path), what=f"200 from {base_url}{path}", timeout=timeout, proc=proc)


def start_api(env: dict, log_path: Path) -> Proc:
    """`python -m api` (uvicorn on KD_API_HOST:KD_API_PORT of `env`), not waited for."""
    return Proc([sys.executable, "-m", "api"], env, log_path)


def start_worker(env: dict, log_path: Path, *, wait: bool = True, name: str = "") -> Proc:
    """`python -m worker`; unless `wait` is false, returns once it has said it is ready."""
    proc = Proc([sys.executable, "-m", "worker"], env, log_path, name=name)
    if wait:
        proc.wait_for_output("ready.", timeout=90)
    return proc


def stop_all(procs: list[Proc], sig_timeout: float = 15) -> None:
    """Stop them side by side: SIGTERM to each first (each takes a few seconds to shut down
    gracefully), then wait for each."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.stop(sig_timeout)


class Stack:
    """The API and worker processes of one run, all with one environment (`env`, from
    `service_env`) and their logs in `log_dir`."""

    def __init__(self, env: dict, log_dir: Path, *, api_key: str, stop_timeout: float = 15):
        """`stop_timeout`: how long `stop` gives each process after SIGTERM before SIGKILL."""
        self.env, self.log_dir, self.api_key, self.stop_timeout = env, Path(log_dir), api_key, stop_timeout
        self.procs: list[Proc] = []
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.port = int(env.get("KD_API_PORT") or free_port())
        self.env = {**env, "KD_API_PORT": str(self.port)}
        self.base_url = f"http://127.0.0.1:{self.port}"

    def _log(self, module: str) -> Path:
        return self.log_dir / f"{module}-{len(self.procs)}.log"

    def start_api(self, **extra_env: str) -> Proc:
        """The API on this stack's port; not waited for (`wait_healthy`)."""
        self.api = start_api({**self.env, **extra_env}, self._log("api"))
        self.procs.append(self.api)
        return self.api

    def start_workers(self, n: int = 1, **extra_env: str) -> list[Proc]:
        """`n` workers started side by side (their start-ups overlap); returns once each is ready."""
        started = []
        for _ in range(n):
            started.append(start_worker({**self.env, **extra_env}, self._log("worker"), wait=False))
            self.procs.append(started[-1])
        for proc in started:
            proc.wait_for_output("ready.", timeout=120)
        self.workers += started
        return started

    def run(self, *, workers: int = 1, api: bool = True, ready_path: str = "/healthz",
            worker_env: dict[str, str] | None = None) -> Stack:
        """Start the API (unless `api` is false) and `workers` workers (with `worker_env` over the
        stack's environment) side by side; returns once the API answers `ready_path` and every
        worker is ready."""
        if api:
            self.start_api()
        if workers:
            self.start_workers(workers, **(worker_env or {}))
        if api:
            self.wait_healthy(ready_path)
        return self

    def wait_healthy(self, path: str = "/healthz", timeout: float = 60) -> None:
        wait_healthy(self.base_url, self.api, path=path, timeout=timeout)

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client of the API with this stack's key."""
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.api_key}"},
                            **{"timeout": 60, **kwargs})

    def worker_logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-tail:]}" for p in self.workers)

    def stop(self) -> None:
        stop_all(self.procs, self.stop_timeout)


@contextmanager
def running_stack(env: dict, log_dir: Path, *, api_key: str, workers: int = 1, api: bool = True,
                  ready_path: str = "/healthz") -> Iterator[Stack]:
    """A Stack, run (`Stack.run`); every process stopped on the way out."""
    stack = Stack(env, log_dir, api_key=api_key)
    try:
        yield stack.run(workers=workers, api=api, ready_path=ready_path)
    finally:
        stack.stop()
