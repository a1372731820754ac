"""Fixtures for the reliability promises of issue 4 (docs/RELIABILITY.md): the API in-process on the
real PostgreSQL, a Redis broker of this test session's own (a private redis-server, which a test
may also kill and start again), and real `python -m worker` processes that the tests kill
(SIGKILL), freeze (SIGSTOP) and start again.

Leases, heartbeats and reaper rounds are shortened (FAST) so that each promise plays out in seconds;
jobs are tiny (digits, an MLP student with 16 hidden units, batch 16: an epoch takes 0.1-0.4 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from sqlalchemy import select, text

from api.app import create_app
from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings
from jobs.tables import Artifact, Job
from harness.services import ROOT, Proc, free_port, service_env, start_worker, wait_until
from tests.factories import digits_job
from tests.utils import API_KEY, upload

FAST = {"KD_LEASE_SECONDS": "3", "KD_HEARTBEAT_SECONDS": "0.5", "KD_REAPER_INTERVAL": "0.5",
        "KD_QUEUED_REQUEUE_AFTER": "2"}
# One intra-op thread per process: the test, the API and up to two workers share two cores, and
# oversubscribed OpenMP threads make an epoch ten times slower. The reference run uses one as well
# (the same reduction order, so the same bits).
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STUDENT = {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}}
DATASET = {"builtin": "digits", "standardize": True}


class Service:
    """The API (a TestClient) and the worker processes of one test, sharing a database, a broker
    and a data directory."""

    def __init__(self, *, database_url: str, broker_url: str, tmp_path: Path, max_attempts: int,
                 env: dict[str, str]):
        self.tmp_path = tmp_path
        self.settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=tmp_path / "data",
                                 bootstrap_api_key=API_KEY, max_attempts=max_attempts)
        self.env = service_env(database_url=database_url, broker_url=broker_url, data_dir=self.settings.data_dir,
                               api_key=API_KEY, KD_MAX_ATTEMPTS=str(max_attempts), **THREADS, **env)
        self._client_context = TestClient(create_app(self.settings), raise_server_exceptions=False)
        self.client = self._client_context.__enter__()
        self.client.headers["Authorization"] = f"Bearer {API_KEY}"
        self.engine = make_engine(database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.workers: dict[str, Proc] = {}
        self._teacher_file: str | None = None

    # --- workers ------------------------------------------------------------------------------
    def start_worker(self, name: str, *, wait: bool = True) -> Proc:
        """`python -m worker` with this service's settings; its database connections carry
        application_name=name (PGAPPNAME), so the test can see what it holds open."""
        proc = start_worker({**self.env, "PGAPPNAME": name}, self.tmp_path / f"{name}.log", wait=wait, name=name)
        self.workers[name] = proc
        return proc

    def start_workers(self, *names: str) -> list[Proc]:
        """Several workers started side by side (their start-ups overlap), each ready."""
        procs = [self.start_worker(name, wait=False) for name in names]
        for proc in procs:
            proc.wait_for_output("ready.", timeout=90)
        return procs

    def owner(self, job_id: str) -> Proc:
        """The worker process that holds the job's newest claim."""
        with self.sessions() as s:
            claimed_by = s.scalar(select(Job.worker).where(Job.id == job_id))
        pid = int(claimed_by.removeprefix("kd-worker-").split("@", 1)[0])  # worker/context.py worker_name
        return next(p for p in self.workers.values() if p.popen.pid == pid)

    def kill(self, proc: Proc) -> None:
        """SIGKILL: the process dies at once, mid-step, with nothing flushed or acknowledged."""
        proc.popen.kill()
        proc.popen.wait(timeout=10)

    def open_transactions(self, proc: Proc, *, older_than: float = 0.0) -> int:
        """How many of the worker's database connections are inside a transaction that began
        more than `older_than` seconds ago."""
        with self.engine.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                "AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)') "
                "AND xact_start < now() - make_interval(secs => :age)"),
                {"name": proc.name, "age": older_than}).scalar_one()

    def freeze(self, proc: Proc, *, tries: int = 100) -> None:
        """SIGSTOP the worker at a moment when it holds no open transaction (one frozen while it
        holds the job row's lock would block every other writer of that row until it is thawed,
        which is a different failure from the one the tests stage)."""
        for _ in range(tries):
            os.kill(proc.popen.pid, signal.SIGSTOP)
            time.sleep(0.05)  # let a statement already sent finish on the server
            if not self.open_transactions(proc):
                return
            os.kill(proc.popen.pid, signal.SIGCONT)
            time.sleep(0.03)
        raise AssertionError(f"{proc.name} never paused outside a transaction")

    def thaw(self, proc: Proc) -> None:
        os.kill(proc.popen.pid, signal.SIGCONT)

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.popen.poll() is None:
                os.kill(proc.popen.pid, signal.SIGCONT)
                proc.popen.kill()
                proc.popen.wait(timeout=10)
            proc.log.close()
        self._client_context.__exit__(None, None, None)
        self.engine.dispose()

    # --- jobs ---------------------------------------------------------------------------------
    def body(self, teacher: tuple[Path, dict], *, baseline: bool = False, **hyper: Any) -> dict:
        path, arch = teacher
        if self._teacher_file is None:
            resp = upload(self.client, path, "teacher")
            assert resp.status_code == 201, resp.text
            self._teacher_file = resp.json()["id"]
        return digits_job(self._teacher_file, arch=arch, student=STUDENT, dataset=DATASET, baseline=baseline,
                          hyperparameters={"epochs": 8, "learning_rate": 0.01, "batch_size": 16, **hyper})

    def submit(self, teacher: tuple[Path, dict], **kwargs: Any) -> dict:
        resp = self.client.post("/v1/jobs", json=self.body(teacher, **kwargs))
        assert resp.status_code == 201, resp.text
        return resp.json()

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str) -> list[dict]:
        out: list[dict] = []
        while True:
            page = self.client.get(f"/v1/jobs/{job_id}/events",
                                   params={"after": out[-1]["id"] if out else 0, "limit": 999}).json()
            out += page["data"]
            if not page["has_more"]:
                return out

    def metrics(self, job_id: str) -> list[dict]:
        return self.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]

    def artifacts(self, job_id: str) -> list[Artifact]:
        with self.sessions() as s:
            return list(s.scalars(select(Artifact).where(Artifact.job_id == job_id)))

    def student_weights(self, job_id: str) -> dict:
        resp = self.client.get(f"/v1/jobs/{job_id}/student")
        assert resp.status_code == 200, resp.text
        path = self.tmp_path / f"{job_id}-student.safetensors"
        path.write_bytes(resp.content)
        return load_file(str(path))

    def wait_for(self, job_id: str, predicate: Callable[[dict], bool], *, timeout: float = 60,
                 what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: no {what or 'change'} after {timeout}s: {job}\n"
                                     f"{self.worker_logs()}")
            time.sleep(0.1)

    def wait_for_event(self, job_id: str, predicate: Callable[[dict], bool], *, timeout: float = 60,
                       what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(job_id) if predicate(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: no {what or 'such'} event after {timeout}s: "
                                     f"{self.job(job_id)}\n{self.worker_logs()}")
            time.sleep(0.1)

    def worker_logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {name} ---\n{proc.output()[-tail:]}" for name, proc in self.workers.items())


@pytest.fixture
def service(clean_pg, broker_redis, tmp_path) -> Iterator[Callable[..., Service]]:
    """service(broker_url=..., max_attempts=..., **KD_env) -> Service; everything it started is
    killed at the end of the test."""
    made: list[Service] = []

    def make(*, broker_url: str = broker_redis, max_attempts: int = 3, **env: str) -> Service:
        svc = Service(database_url=clean_pg, broker_url=broker_url, tmp_path=tmp_path, max_attempts=max_attempts,
                      env={**FAST, **env})
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


class RedisServer:
    """A private redis-server on a free port, without persistence: killing it loses every message
    it held, like a broker restart without a volume. Never the shared one on 6379."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        wait_until(self._answers, what=f"redis-server on port {self.port}", timeout=10, interval=0.05)

    def _answers(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()}")
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


@pytest.fixture(scope="session")
def _session_redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def broker_redis(_session_redis) -> str:
    """An empty broker of this test session alone. Not the shared Redis database of the other
    service tests: other test sessions on the machine publish there too, and their workers would
    take this test's messages (and this test's workers theirs)."""
    client = redis.Redis.from_url(_session_redis.url)
    client.flushdb()
    client.close()
    return _session_redis.url


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may kill and start again."""
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def reference_students(tmp_path_factory) -> Callable[[dict, Path], tuple[dict, list[dict]]]:
    """reference(job_spec, teacher_path) -> (student tensors, metrics.jsonl rows) of the same spec
    run uninterrupted in this process with kdcore.run_distillation; cached per spec."""
    from kdcore import DistillSpec, run_distillation

    cache: dict[str, tuple[dict, list[dict]]] = {}

    def reference(spec: dict, teacher_path: Path) -> tuple[dict, list[dict]]:
        key = json.dumps(spec, sort_keys=True)
        if key not in cache:
            from jobs import spec_files

            def local(field, where, file_id):  # only the teacher is a file in these specs
                assert field.api == "teacher.file_id", where
                return str(teacher_path)

            # the worker's mapping of file ids to paths (the one table, jobs/spec_files.py)
            raw = spec_files.to_kdcore(json.loads(key), local)
            out = tmp_path_factory.mktemp("reference")
            threads = torch.get_num_threads()
            torch.set_num_threads(int(THREADS["OMP_NUM_THREADS"]))
            try:
                run_distillation(DistillSpec.from_dict(raw), out_dir=out / "out",
                                 checkpoint_dir=out / "checkpoints", export_onnx_file=False)
            finally:
                torch.set_num_threads(threads)
            rows = [json.loads(line) for line in (out / "out" / "metrics.jsonl").read_text().splitlines()]
            cache[key] = (load_file(str(out / "out" / "student.safetensors")), rows)
        return cache[key]

    return reference
