"""An uploaded ONNX graph never runs in the API process (issue 16 item 2): it is loaded and probed
in a child with memory and time limits, and uploads are checked a bounded number at a time.

Before: a 3 KB graph with a 10^15-step Loop never returned from POST /v1/files (15 of them took
down every /v1 route), and a 3 KB ConstantOfShape graph added gigabytes to the API's memory."""

from __future__ import annotations

import resource
import threading
import time

from fastapi.testclient import TestClient

from api.app import create_app
from jobs.settings import Settings
from tests import hostile_graphs as g
from tests.utils import API_KEY, problem, upload


def make_client(clean_pg, redis_url, tmp_path, **overrides) -> TestClient:
    settings = Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data",
                        bootstrap_api_key=API_KEY, onnx_check_timeout_seconds=2,
                        onnx_check_memory_bytes=1 << 30, **overrides)
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {API_KEY}"
    return client


def upload_within(client, path, seconds: float):
    """The upload's response, or an AssertionError when it has none after `seconds`."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(resp=upload(client, path, "teacher")), daemon=True)
    thread.start()
    thread.join(seconds)
    assert "resp" in out, f"POST /v1/files of {path.name} did not answer within {seconds} s"
    return out["resp"]


def nothing_kept(client, tmp_path) -> None:
    assert client.get("/v1/files").json()["data"] == []
    assert list((tmp_path / "data" / "tmp").glob("*")) == []


def test_a_graph_that_never_ends_is_a_422_at_the_time_limit(clean_pg, redis_url, tmp_path):
    path = g.save(g.endless_loop(classes_symbolic=True), tmp_path / "loop.onnx")
    with make_client(clean_pg, redis_url, tmp_path) as client:
        started = time.monotonic()
        err = problem(upload_within(client, path, 30), 422)
        assert time.monotonic() - started < 15
        assert err["errors"][0]["field"] == "file" and "took longer than 2 s" in err["detail"]
        assert client.get("/healthz").status_code == 200
        nothing_kept(client, tmp_path)


def test_a_graph_that_asks_for_4_gib_is_a_422_and_costs_the_api_no_memory(clean_pg, redis_url, tmp_path):
    path = g.save(g.memory_bomb(), tmp_path / "bomb.onnx")
    with make_client(clean_pg, redis_url, tmp_path) as client:
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        err = problem(upload_within(client, path, 60), 422)
        assert "memory" in err["detail"].lower() or "allocate" in err["detail"].lower()
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 256 * 1024  # KiB
        nothing_kept(client, tmp_path)


def test_checks_past_the_concurrency_bound_wait_then_get_a_503(clean_pg, redis_url, tmp_path):
    """One check at a time: a second upload waits (no thread, no connection) for 1 s, then is a 503
    with Retry-After; the API answers other requests meanwhile."""
    path = g.save(g.endless_loop(classes_symbolic=True), tmp_path / "loop.onnx")
    with make_client(clean_pg, redis_url, tmp_path, max_concurrent_file_checks=1,
                     file_check_wait_seconds=1) as client:
        responses: list = []
        threads = [threading.Thread(target=lambda: responses.append(upload(client, path, "teacher")))
                   for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        started = time.monotonic()
        assert client.get("/v1/files").status_code == 200
        assert time.monotonic() - started < 2
        for t in threads:
            t.join(30)
        assert sorted(r.status_code for r in responses) == [422, 503]
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "5"
        assert "send the file again" in problem(busy, 503)["detail"]
        nothing_kept(client, tmp_path)


def test_a_well_behaved_graph_is_still_accepted(clean_pg, redis_url, tmp_path):
    path = g.save(g.linear(), tmp_path / "linear.onnx")
    with make_client(clean_pg, redis_url, tmp_path) as client:
        resp = upload(client, path, "teacher")
        assert resp.status_code == 201, resp.text
        assert resp.json()["num_classes"] == g.CLASSES and resp.json()["kind"] == "onnx"
