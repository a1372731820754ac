"""Keep-alive requests are not delayed when the API runs several processes (issue 13 item 1).

uvicorn's multiprocess mode bound its listening socket with protocol 0; accepted sockets inherit it,
asyncio then leaves TCP_NODELAY off, and Nagle's algorithm meets the client's delayed ACK: every
keep-alive request after the first waited about 40-45 ms. Timings are not asserted elsewhere in the
suite; this bound (20 requests far under 20 × 40 ms) tells the stall from its absence by an order of
magnitude on any machine that can run the suite."""

from __future__ import annotations

import http.client
import time

import pytest


pytestmark = pytest.mark.slow
REQUESTS = 20


@pytest.mark.parametrize("workers", ["2", "1"])
def test_keep_alive_requests_are_not_delayed(live_stack, workers):
    port = live_stack(workers=0, stop_timeout=5, KD_API_WORKERS=workers).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/healthz")  # the connection is open and warm
    conn.getresponse().read()
    started = time.perf_counter()
    for _ in range(REQUESTS):
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    elapsed = time.perf_counter() - started
    conn.close()
    assert elapsed < REQUESTS * 0.040 / 2, f"{REQUESTS} keep-alive requests took {elapsed * 1000:.0f} ms"
