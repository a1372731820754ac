"""B8: live streams do not starve reads. GET /v1/jobs/{id} throughput (wrk, 1 thread, 16 and 64
connections) on the production stack (uvicorn with 2 processes, PostgreSQL, Redis) without SSE
streams, then with STREAMS open SSE streams on /v1/jobs/{id}/events (one per queued job, held by a
client in this process, so none of them ever ends), then without again; and the CPU the API
processes spend on the open streams alone, with no other request.
Target: GET job throughput with the streams ≥ 50 % of without."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.b4_api_load import _wrk, api_cpu_seconds
from bench.stack import API_KEY, stack, tiny_job

STREAMS = 200
CONNECTIONS = (16, 64)
IDLE_CPU_SECONDS = 5


class Streams:
    """STREAMS live event streams, each on its own job, held open by an asyncio loop in a thread."""

    def __init__(self, base_url: str, job_ids: list[str]):
        self.base_url, self.job_ids = base_url, job_ids
        self.open = 0
        self.failed: list[str] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> "Streams":
        self._thread.start()
        deadline = time.monotonic() + 120
        while self.open + len(self.failed) < len(self.job_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open} of {len(self.job_ids)} streams opened")
            time.sleep(0.1)
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} streams failed: {self.failed[:3]}")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        limits = httpx.Limits(max_connections=len(self.job_ids) + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=None,
                                     headers={"Authorization": f"Bearer {API_KEY}",
                                              "Accept": "text/event-stream"}) as client:
            tasks = [asyncio.create_task(self._hold(client, job)) for job in self.job_ids]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _hold(self, client: httpx.AsyncClient, job_id: str) -> None:
        try:
            async with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                if resp.status_code != 200:
                    self.failed.append(f"{resp.status_code} {(await resp.aread())[:200]!r}")
                    return
                chunks = resp.aiter_text()
                first = await chunks.__anext__()  # "retry: ..." : the stream is open
                assert first.startswith("retry:"), first
                self.open += 1
                async for _ in chunks:  # events and keep-alives, until cancelled
                    pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported, the run fails
            self.failed.append(repr(e)[:200])


def run() -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("B8 needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="kd-b8-"))
    # one tenant holds every stream: the per-process bound (KD_MAX_STREAMS_PER_TENANT, 8) is raised to allow it
    with stack(production=True, api_workers=2, extra_env={"KD_MAX_STREAMS_PER_TENANT": str(STREAMS)}) as s, \
            s.client() as c:
        body = tiny_job(c, tmp, baseline=True)  # (the default)
        jobs = [c.post("/v1/jobs", json=body).json()["id"] for _ in range(STREAMS + 1)]
        target, streamed = jobs[0], jobs[1:]
        url = f"{s.base_url}/v1/jobs/{target}"

        def cells() -> dict:
            return {n: _wrk(url, n) for n in CONNECTIONS}

        before = cells()
        supervisor = s.procs[0].pid
        with Streams(s.base_url, streamed) as streams:
            cpu0, t0 = api_cpu_seconds(supervisor), time.monotonic()
            time.sleep(IDLE_CPU_SECONDS)
            idle_cpu = (api_cpu_seconds(supervisor) - cpu0) / (time.monotonic() - t0)
            during = cells()
            still_open = streams.open - len(streams.failed)
        after = cells()
    return {"streams": STREAMS, "streams_open_at_end": still_open, "api_processes": 2,
            "api_cpu_cores_for_idle_streams": idle_cpu,
            "without": before, "with_streams": during, "without_again": after,
            # against the mean of the runs before and after, so a drift of the machine's load counts less
            "share_with_streams": {n: during[n]["rps"] / ((before[n]["rps"] + after[n]["rps"]) / 2)
                                   for n in CONNECTIONS}}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
