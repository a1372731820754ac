"""Retries, backoff and error mapping, against an httpx.MockTransport standing in for the service
(rate limits, outages and dropped connections are hard to produce on demand from the real one)."""

from __future__ import annotations

import email.utils
import hashlib
import time

import httpx
import pytest

import kdclient.client
from kdclient import ApiError, Client, IntegrityError, KDClientError, ServiceUnreachable

JOB = {"id": "job_1", "status": "queued", "spec": {}, "progress": {"fraction": 0.0}, "attempt": 0,
       "max_attempts": 3, "created_at": "2026-01-01T00:00:00Z"}
PROBLEM = {"type": "about:blank", "title": "Too Many Requests", "status": 429,
           "detail": "concurrent jobs quota exceeded: the limit is 4 unfinished jobs"}


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Every wait the client makes, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(kdclient.client, "_sleep", waits.append)
    return waits


def mock_client(handler, **kwargs) -> Client:
    return Client(api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handler),
                                                         base_url="http://kd.test"), **kwargs)


def scripted(*answers):
    """A handler answering with these responses (or raising these exceptions) in turn; it records
    the requests it saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    handler.seen = seen
    return handler


def problem(status: int, headers=None, **extra) -> httpx.Response:
    return httpx.Response(status, json={**PROBLEM, "status": status, **extra}, headers=headers,
                          extensions={"reason_phrase": b""})


def test_429_is_retried_after_its_retry_after(sleeps):
    handler = scripted(problem(429, {"Retry-After": "3"}), problem(429, {"Retry-After": "0"}),
                       httpx.Response(200, json=JOB))
    job = mock_client(handler).get_job("job_1")
    assert job.id == "job_1" and sleeps == [3.0, 0.0] and len(handler.seen) == 3
    assert handler.seen[0].headers["authorization"] == "Bearer k"


def test_503_without_retry_after_backs_off_exponentially(sleeps):
    handler = scripted(problem(503), problem(503), problem(503), httpx.Response(200, json=JOB))
    mock_client(handler).get_job("job_1")
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2] and 0.5 <= sleeps[0] < 0.6


def test_retry_after_as_an_http_date(sleeps):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    handler = scripted(problem(503, {"Retry-After": when}), httpx.Response(200, json=JOB))
    mock_client(handler).get_job("job_1")
    assert len(sleeps) == 1 and 25 <= sleeps[0] <= 31


def test_gives_up_after_max_retries_with_the_problem(sleeps):
    handler = scripted(problem(429, {"Retry-After": "1"}))
    with pytest.raises(ApiError) as e:
        mock_client(handler, max_retries=2).get_job("job_1")
    assert e.value.status == 429 and "quota" in e.value.detail and e.value.headers["retry-after"] == "1"
    assert len(handler.seen) == 3 and sleeps == [1.0, 1.0]


def test_a_retry_after_longer_than_max_retry_wait_is_not_waited_for(sleeps):
    handler = scripted(problem(429, {"Retry-After": "3600"}), httpx.Response(200, json=JOB))
    with pytest.raises(ApiError) as e:
        mock_client(handler, max_retry_wait=60).get_job("job_1")
    assert e.value.status == 429 and sleeps == [] and len(handler.seen) == 1


def test_other_errors_are_not_retried(sleeps):
    handler = scripted(problem(422, errors=[{"field": "hyperparameters.alpha", "reason": "must be between 0 and 1"}],
                               detail="hyperparameters.alpha: must be between 0 and 1"))
    with pytest.raises(ApiError) as e:
        mock_client(handler).create_job({})
    assert e.value.field == "hyperparameters.alpha" and e.value.errors[0].reason == "must be between 0 and 1"
    assert sleeps == [] and len(handler.seen) == 1


def test_connection_errors_are_retried_with_backoff(sleeps):
    handler = scripted(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json=JOB))
    assert mock_client(handler).get_job("job_1").status == "queued"
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]


def test_an_unreachable_service_is_one_error_not_an_httpx_traceback(sleeps):
    handler = scripted(httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(ServiceUnreachable) as e:
        mock_client(handler, max_retries=3).list_jobs()
    assert len(handler.seen) == 4 and len(sleeps) == 3
    assert "kd.test" in str(e.value) and "Connection refused" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert not isinstance(e.value, httpx.HTTPError) and isinstance(e.value, KDClientError)


def test_retried_posts_carry_one_idempotency_key_and_the_whole_upload(sleeps, tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"x" * 5000)
    file_json = {"id": "file_1", "purpose": "teacher", "format": "safetensors", "filename": "t.bin",
                 "bytes": 5000, "sha256": "0" * 64, "created_at": "2026-01-01T00:00:00+00:00"}
    handler = scripted(httpx.ConnectError("reset"), problem(503, {"Retry-After": "0"}),
                       httpx.Response(201, json=file_json))
    f = mock_client(handler).upload_file(path, "teacher")
    assert f.id == "file_1" and f.bytes == 5000
    keys = {r.headers["idempotency-key"] for r in handler.seen}
    assert len(keys) == 1 and next(iter(keys)).startswith("kdclient-")
    assert all(r.content.count(b"x" * 5000) == 1 and b'name="purpose"' in r.content for r in handler.seen)

    jobs = scripted(httpx.ReadTimeout("lost"), httpx.Response(201, json=JOB))
    mock_client(jobs).create_job({"teacher": {"file_id": "file_1"}})
    assert len({r.headers["idempotency-key"] for r in jobs.seen}) == 1 and len(jobs.seen) == 2


def test_an_error_that_is_not_problem_json(sleeps):
    handler = scripted(httpx.Response(502, text="<html>Bad gateway</html>"))
    with pytest.raises(ApiError) as e:
        mock_client(handler).get_job("job_1")
    assert (e.value.status, e.value.title) == (502, "Bad Gateway") and "Bad gateway" in e.value.detail


def test_a_bad_url_is_reported_at_once(sleeps):
    with pytest.raises(KDClientError) as e:
        Client("localhost:8000", "k").list_jobs()
    assert "localhost:8000" in str(e.value) and sleeps == []


# --- a transfer that breaks off is resumed within the same call ---------------------------------------

class Breaking(httpx.SyncByteStream):
    """A body that sends `upto` bytes and then loses the connection."""

    def __init__(self, data: bytes, upto: int):
        self.data, self.upto = data, upto

    def __iter__(self):
        yield self.data[: self.upto]
        raise httpx.ReadError("connection reset by peer")


def ranged_server(data: bytes, *, break_first_at: int | None = None, etag: str | None = None):
    """Serves `data` with ETag and Range like the API; the first answer breaks off mid-body."""
    etag = etag or f'"{hashlib.sha256(data).hexdigest()}"'
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        start = 0
        if (rng := request.headers.get("range")) and request.headers.get("if-range", etag) == etag:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        body = data[start:]
        headers = {"ETag": etag, "Content-Length": str(len(body))}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if break_first_at is not None and len(seen) == 1:
            return httpx.Response(206 if start else 200, headers=headers, stream=Breaking(body, break_first_at))
        return httpx.Response(206 if start else 200, headers=headers, content=body)

    handler.seen = seen
    return handler


def test_a_broken_transfer_resumes_from_where_it_stopped(sleeps, tmp_path):
    data = bytes(range(256)) * 1000
    handler = ranged_server(data, break_first_at=100_000)
    progress = []
    out = mock_client(handler).download_student("job_1", tmp_path / "s.safetensors",
                                                on_progress=lambda got, total: progress.append((got, total)))
    assert out.read_bytes() == data and len(sleeps) == 1
    assert [r.headers.get("range") for r in handler.seen] == [None, "bytes=100000-"]
    assert handler.seen[1].headers["if-range"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert handler.seen[0].url.params["format"] == "safetensors"
    assert progress[-1] == (len(data), len(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_a_changed_file_is_sent_whole_and_a_missing_etag_is_refused(sleeps, tmp_path):
    data = b"new content" * 100
    (tmp_path / "s.safetensors.part").write_bytes(b"old content")
    (tmp_path / "s.safetensors.part.etag").write_text('"' + "a" * 64 + '"')
    handler = ranged_server(data)  # its ETag differs from the one stored: If-Range fails, 200 whole
    mock_client(handler).download_student("job_1", tmp_path / "s.safetensors")
    assert (tmp_path / "s.safetensors").read_bytes() == data and handler.seen[0].headers["range"] == "bytes=11-"

    with pytest.raises(IntegrityError):
        mock_client(ranged_server(data, etag='W/"v1"')).download_student("job_1", tmp_path / "t.safetensors")
    assert list(tmp_path.glob("t.*")) == []


# --- what a retry waits for, said (issue 15) --------------------------------------------------------------

def test_each_retry_says_what_it_waits_for(sleeps):
    said: list[str] = []
    quota = problem(429, {"Retry-After": "30"})
    handler = scripted(quota, httpx.ConnectError("connection refused"), httpx.Response(201, json=JOB))
    mock_client(handler, on_retry=said.append).create_job({})
    assert said[0] == ("retrying POST /v1/jobs after 429 (concurrent jobs quota exceeded: the limit is 4 "
                       "unfinished jobs) in 30 s (retry 1 of 5)")
    assert said[1].startswith("service unreachable (ConnectError: connection refused); retrying POST /v1/jobs in ")
    assert said[1].endswith(" s (retry 2 of 5)") and len(said) == 2 and sleeps[0] == 30.0


def test_the_cli_prints_the_retries_on_stderr(sleeps, monkeypatch):
    from typer.testing import CliRunner

    from kdclient import cli

    handler = scripted(problem(503, {"Retry-After": "2"}, detail="the database is not reachable"),
                       httpx.Response(200, json={"data": [JOB], "has_more": False}))
    monkeypatch.setattr(cli, "make_client", lambda url, key: mock_client(handler))
    result = CliRunner().invoke(cli.app, ["jobs", "list"])
    assert result.exit_code == 0, result.output
    assert "retrying GET /v1/jobs after 503 (the database is not reachable) in 2 s (retry 1 of 5)" in result.stderr
    assert "job_1" in result.stdout and "retrying" not in result.stdout
