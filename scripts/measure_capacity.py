"""Figures for docs/CAPACITY.md that bench/ does not give: Redis bytes per queued job message, and
PostgreSQL connections one idle worker process holds.

    .venv/bin/python scripts/measure_capacity.py [--pg postgresql+psycopg://postgres@127.0.0.1:5432]
                                                 [--redis redis://127.0.0.1:6379/15] [--messages 1000]

Uses a scratch database (created, migrated, dropped: harness/services.py) and a scratch Redis key
(deleted after); starts one `python -m worker` with one thread and stops it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.enqueue import Enqueuer  # noqa: E402
from harness.services import fresh_database, service_env, start_worker  # noqa: E402
from jobs.db import make_engine  # noqa: E402


def redis_bytes_per_message(url: str, messages: int) -> dict:
    queue = f"kd.capacity-probe-{secrets.token_hex(4)}"
    client = redis.Redis.from_url(url)
    enqueuer = Enqueuer(url)
    try:
        for _ in range(messages):
            enqueuer.enqueue_job("job_" + secrets.token_hex(12), queue)
        used = client.memory_usage(queue, samples=0)
        return {"messages": client.llen(queue), "list_bytes": used, "bytes_per_message": round(used / messages)}
    finally:
        client.delete(queue)
        client.close()


def worker_connections(pg_server: str, broker: str, seconds: float) -> dict:
    with fresh_database("kd_capacity", server=pg_server) as url:
        name = url.rsplit("/", 1)[1]
        env = service_env(database_url=url, broker_url=broker, data_dir=Path(f"/tmp/{name}"), api_key=None,
                          KD_REAPER_INTERVAL="1", KD_WORKER_HEARTBEAT_SECONDS="1", KD_WORKER_STALE_SECONDS="5")
        proc = start_worker(env, Path(f"/tmp/{name}.log"), wait=False)
        try:
            time.sleep(seconds)  # start-up, registration, several reaper rounds and heartbeats
            admin = make_engine(f"{pg_server}/test")
            try:
                with admin.connect() as conn:
                    count = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                                         {"d": name}).scalar()
                    max_conn = conn.execute(text("SHOW max_connections")).scalar()
            finally:
                admin.dispose()
        finally:
            proc.stop(sig_timeout=30)
    return {"idle_worker_connections": count, "max_connections": int(max_conn), "after_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=25)
    args = parser.parse_args()
    out = {"redis": redis_bytes_per_message(args.redis, args.messages),
           "postgresql": worker_connections(args.pg, args.redis, args.seconds)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
