"""`kdclient.Client`: the service's HTTP API as Python methods with typed results.

    from kdclient import Client

    with Client() as kd:                                 # KD_URL and KD_API_KEY from the environment
        teacher = kd.upload_file("teacher.safetensors", "teacher")
        job = kd.create_job({"teacher": {"file_id": teacher.id, "arch": "mlp",
                                         "arch_params": {"hidden_sizes": [256]}},
                             "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [32]}},
                             "dataset": {"builtin": "digits"}})
        job = kd.wait(job.id, on_update=lambda j: print(j.status, j.progress.fraction))
        if job.succeeded:
            kd.download_student(job.id, "student.safetensors")

Retries: 429 and 503 answers are retried after their `Retry-After` (seconds or an HTTP date; without
one, an exponential backoff), and connection errors (refused, reset, timed out) after a backoff of
0.5 s, 1 s, 2 s, ... (at most 8 s), up to `max_retries` times. A `Retry-After` longer than
`max_retry_wait` (default 120 s; the stored-bytes quota says 3600 s: waiting will not help) is not
waited for: the ApiError is raised at once. Uploads and job submissions carry an `Idempotency-Key`,
so a retried POST never creates a second file or job. `on_retry`, when given, is called with one
line before each wait, saying what is waited for (the CLI prints it on stderr):

    retrying POST /v1/jobs after 429 (concurrent jobs quota exceeded: ...) in 30 s (retry 1 of 5)
    service unreachable (ConnectError: ...); retrying GET /v1/jobs/job_1 in 0.5 s (retry 1 of 5)
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from kdclient.errors import ApiError, IntegrityError, KDClientError, ServiceUnreachable, WaitTimeout
from kdclient.models import Event, File, Job, Metric, Page

DEFAULT_URL = "http://127.0.0.1:8000"
PURPOSES = ("teacher", "dataset", "teacher_logits", "student_init")
STUDENT_FORMATS = ("safetensors", "onnx")
RETRY_STATUSES = frozenset({429, 503})
MAX_BACKOFF_SECONDS = 8.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

try:
    from importlib.metadata import version as _version

    _VERSION = _version("kd-service")
except Exception:  # not installed: running from a checkout
    _VERSION = "0"


def _sleep(seconds: float) -> None:  # one place for tests to patch
    time.sleep(seconds)


class Client:
    """A client of the distillation service.

    base_url     the service (default: $KD_URL, else http://127.0.0.1:8000)
    api_key      a bearer key (default: $KD_API_KEY)
    timeout      seconds per network operation (connect, read, write)
    max_retries  how many times a request is retried after a 429/503 or a connection error
    max_retry_wait  the longest Retry-After the client waits for; longer ones raise at once
    http_client  an httpx.Client to send requests with (its base_url is used; tests pass a
                 FastAPI TestClient here). The Client does not close a client it was given.
    on_retry     called with a one-line message before each retry's wait (what failed, how long)
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30,
                 max_retries: int = 5, max_retry_wait: float = 120.0,
                 http_client: httpx.Client | None = None, on_retry: Callable[[str], None] | None = None):
        if base_url is None and http_client is not None:
            base_url = str(http_client.base_url)
        self.base_url = (base_url or os.environ.get("KD_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("KD_API_KEY") or None)
        self.max_retries = max(0, int(max_retries))
        self.max_retry_wait = max_retry_wait
        self.on_retry = on_retry
        self._owns_http = http_client is None
        if http_client is None:
            http_client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout))
        self._http = http_client

    # --- plumbing ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": f"kdclient/{_VERSION}", "Accept": "application/json, application/problem+json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** attempt) * (1 + 0.1 * random.random())

    def _retry_after(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying this 429/503, or None when it must not be retried."""
        value = response.headers.get("retry-after")
        if value is None:
            return self._backoff(attempt)
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return self._backoff(attempt)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
        seconds = max(0.0, seconds)
        return None if seconds > self.max_retry_wait else seconds

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
              data: dict[str, Any] | None = None, upload: tuple[str, Any] | None = None,
              headers: dict[str, str] | None = None, stream: bool = False,
              allow: frozenset[int] = frozenset()) -> httpx.Response:
        """Send with retries; a response with status < 400 (or in `allow`), else ApiError."""
        params = {k: v for k, v in (params or {}).items() if v is not None} or None
        attempt = 0
        while True:
            files = None
            if upload is not None:
                name, handle = upload
                handle.seek(0)
                files = {"file": (name, handle, "application/octet-stream")}
            try:
                request = self._http.build_request(method, path, params=params, json=json, data=data,
                                                   files=files, headers=self._headers(headers))
                response = self._http.send(request, stream=stream)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
                raise KDClientError(f"invalid service URL {self.base_url!r}: {e}") from None
            except httpx.TransportError as e:
                if attempt >= self.max_retries:
                    raise ServiceUnreachable(
                        f"cannot reach {self.base_url} ({type(e).__name__}: {e or 'no answer'}) after "
                        f"{attempt + 1} attempt{'s' if attempt else ''}") from None
                wait = self._backoff(attempt)
                self._say(f"service unreachable ({type(e).__name__}: {e or 'no answer'}); retrying {method} "
                          f"{path} in {_seconds(wait)} (retry {attempt + 1} of {self.max_retries})")
                _sleep(wait)
                attempt += 1
                continue
            except httpx.HTTPError as e:
                raise KDClientError(f"{method} {path}: {type(e).__name__}: {e}") from None
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                wait = self._retry_after(response, attempt)
                if wait is not None:
                    if self.on_retry is not None:
                        try:
                            response.read()
                        except httpx.HTTPError:
                            pass
                        detail = ApiError.from_response(response).detail
                        self._say(f"retrying {method} {path} after {response.status_code}"
                                  f"{f' ({detail})' if detail else ''} in {_seconds(wait)} "
                                  f"(retry {attempt + 1} of {self.max_retries})")
                    response.close()
                    _sleep(wait)
                    attempt += 1
                    continue
            if response.status_code >= 400 and response.status_code not in allow:
                try:
                    response.read()
                except httpx.HTTPError:
                    pass
                finally:
                    response.close()
                raise ApiError.from_response(response)
            return response

    def _say(self, message: str) -> None:
        if self.on_retry is not None:
            self.on_retry(message)

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise KDClientError(f"{method} {path}: the service answered {response.status_code} with a body "
                                f"that is not JSON: {response.text[:200]!r}") from None

    @staticmethod
    def _idempotency(key: str | None) -> dict[str, str]:
        return {"Idempotency-Key": key or f"kdclient-{uuid.uuid4().hex}"}

    # --- service --------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """`GET /readyz`: {"status": "ready", ...}; ApiError (503) when the database or broker is down."""
        return self._json("GET", "/readyz")

    # --- files ----------------------------------------------------------------------------------------
    def upload_file(self, path: str | os.PathLike, purpose: str, *, filename: str | None = None,
                    idempotency_key: str | None = None) -> File:
        """Upload a local file with purpose teacher, dataset, teacher_logits or student_init. The service
        validates its content (422 with the reason otherwise)."""
        path = Path(path)
        with path.open("rb") as handle:
            body = self._json("POST", "/v1/files", data={"purpose": purpose},
                              upload=(filename or path.name, handle),
                              headers=self._idempotency(idempotency_key))
        return File.from_dict(body)

    def list_files(self, *, purpose: str | None = None, limit: int = 20, after: str | None = None,
                   sha256: str | None = None) -> Page[File]:
        """One page of files, newest first (only those with this content's `sha256` when given)."""
        body = self._json("GET", "/v1/files", params={"purpose": purpose, "limit": limit, "after": after,
                                                      "sha256": sha256})
        return Page([File.from_dict(d) for d in body["data"]], bool(body.get("has_more")))

    def find_file(self, path: str | os.PathLike, purpose: str, *, max_pages: int = 10) -> File | None:
        """The newest file already uploaded with this local file's content (sha256) and purpose, or
        None. The service filters by sha256; the match is checked here too, over at most `max_pages`
        pages, so a service that ignored the filter costs a bounded listing, never a wrong file."""
        digest = hashlib.sha256()
        with Path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        sha256, after = digest.hexdigest(), None
        for _ in range(max_pages):
            page = self.list_files(purpose=purpose, sha256=sha256, limit=100, after=after)
            for f in page:
                if f.sha256 == sha256 and f.purpose == purpose:
                    return f
            if (after := page.next_after) is None:
                return None
        return None

    def iter_files(self, *, purpose: str | None = None, page_size: int = 100) -> Iterator[File]:
        """Every file, newest first, fetching pages as needed."""
        after = None
        while True:
            page = self.list_files(purpose=purpose, limit=page_size, after=after)
            yield from page
            if (after := page.next_after) is None:
                return

    def get_file(self, file_id: str) -> File:
        return File.from_dict(self._json("GET", f"/v1/files/{file_id}"))

    def delete_file(self, file_id: str) -> None:
        """Delete a file (ApiError 409 while an unfinished job uses it)."""
        self._send("DELETE", f"/v1/files/{file_id}").close()

    def download_file(self, file_id: str, path: str | os.PathLike, *,
                      on_progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Download a file's content to `path`, resumably; see `download_student`."""
        return self._download(f"/v1/files/{file_id}/content", Path(path), params=None, on_progress=on_progress)

    # --- jobs -----------------------------------------------------------------------------------------
    def create_job(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job. `spec` is the body of POST /v1/jobs (teacher, student, dataset,
        hyperparameters, baseline, metadata), sent as given; the answer's `spec` has every default
        resolved. Few labels and many inputs, for example:

            "dataset": {"train_file_id": "file_…", "unlabeled_file_ids": ["file_…", "file_…"]}
            "dataset": {"builtin": "digits", "labels_per_class": 10}
            "hyperparameters": {"augment": ["shift", "mixup"], "shift_max": 4, "mixup_alpha": 0.4}

        The result's `student` and `baseline` then carry `train_rows` ({"labeled": n, "unlabeled": m})
        and `steps`; their `accuracy` is None when the evaluation split has no labels (`agreement`
        with the teacher is the score)."""
        return Job.from_dict(self._json("POST", "/v1/jobs", json=spec, headers=self._idempotency(idempotency_key)))

    def list_jobs(self, status: str | None = None, limit: int = 20, after: str | None = None) -> Page[Job]:
        """One page of jobs, newest first."""
        body = self._json("GET", "/v1/jobs", params={"status": status, "limit": limit, "after": after})
        return Page([Job.from_dict(d) for d in body["data"]], bool(body.get("has_more")))

    def iter_jobs(self, status: str | None = None, *, page_size: int = 100) -> Iterator[Job]:
        """Every job (of this status), newest first, fetching pages as needed."""
        after = None
        while True:
            page = self.list_jobs(status=status, limit=page_size, after=after)
            yield from page
            if (after := page.next_after) is None:
                return

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self._json("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel: a queued job at once, a running one at its next step (ApiError 409 once finished)."""
        return Job.from_dict(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """Every event of the job after event id `after` (0: from the start), in order."""
        events: list[Event] = []
        while True:
            body = self._json("GET", f"/v1/jobs/{job_id}/events", params={"after": after, "limit": 999})
            events.extend(Event.from_dict(d) for d in body["data"])
            if not body.get("has_more") or not body["data"]:
                return events
            after = events[-1].id

    def metrics(self, job_id: str) -> list[Metric]:
        """One row per epoch and run (`student`, then `baseline`)."""
        return [Metric.from_dict(d) for d in self._json("GET", f"/v1/jobs/{job_id}/metrics")["data"]]

    def wait(self, job_id: str, *, poll: float = 1.0, timeout: float | None = None,
             on_update: Callable[[Job], None] | None = None) -> Job:
        """Poll the job every `poll` seconds until it is succeeded, failed or cancelled and return it.
        `on_update` gets every polled Job (the last one included). Past `timeout` seconds, WaitTimeout
        (the job itself keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() + poll > deadline:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout} s", job)
            time.sleep(poll)

    def download_student(self, job_id: str, path: str | os.PathLike, *, format: str = "safetensors",
                         on_progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Download a succeeded job's student (`safetensors` or `onnx`) to `path` and return the path.

        The bytes go to `<path>.part` first (and the ETag to `<path>.part.etag`). When that partial
        file exists, the download resumes with `Range: bytes=N-` and `If-Range: <ETag>` (a changed
        file is sent whole instead); a connection lost mid-transfer resumes the same way, up to
        max_retries times. The finished file's sha256 is checked against the ETag, a quoted sha256:
        on a mismatch the partial file is deleted and IntegrityError raised; on success it is renamed
        to `path`. `on_progress(received_bytes, total_bytes_or_None)` follows the transfer."""
        if format not in STUDENT_FORMATS:
            raise KDClientError(f"format must be one of {', '.join(STUDENT_FORMATS)}, not {format!r}")
        return self._download(f"/v1/jobs/{job_id}/student", Path(path), params={"format": format},
                              on_progress=on_progress)

    def _download(self, url: str, path: Path, *, params: dict[str, Any] | None,
                  on_progress: Callable[[int, int | None], None] | None) -> Path:
        part = path.with_name(path.name + ".part")
        tag_file = path.with_name(path.name + ".part.etag")
        path.parent.mkdir(parents=True, exist_ok=True)
        interruptions = restarts = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Accept-Encoding": "identity", "Accept": "*/*"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if tag_file.exists() and (known := tag_file.read_text().strip()):
                    headers["If-Range"] = known
            response = self._send("GET", url, params=params, headers=headers, stream=True, allow=frozenset({416}))
            try:
                if response.status_code == 416 or (response.status_code == 206 and not self._starts_at(response, offset)):
                    # the partial file is not a prefix the service can continue: start again, once
                    _remove(part, tag_file)
                    restarts += 1
                    if restarts > 1:
                        raise KDClientError(f"GET {url}: the service does not answer byte ranges consistently")
                    continue
                resumed = response.status_code == 206
                etag = response.headers.get("etag", "")
                tag_file.write_text(etag)
                length = response.headers.get("content-length")
                total = (offset if resumed else 0) + int(length) if length and length.isdigit() else None
                received = offset if resumed else 0
                try:
                    with part.open("ab" if resumed else "wb") as f:
                        for chunk in response.iter_bytes():  # as received: nothing buffered is lost
                            f.write(chunk)
                            received += len(chunk)
                            if on_progress is not None:
                                on_progress(received, total)
                except httpx.TransportError as e:  # the connection broke mid-body: keep the part, resume
                    if interruptions >= self.max_retries:
                        raise ServiceUnreachable(f"GET {url}: the transfer broke off {interruptions + 1} times "
                                                 f"({type(e).__name__}: {e}); {part} is kept and the next "
                                                 "download resumes from it") from None
                    wait = self._backoff(interruptions)
                    self._say(f"the transfer of {url} broke off at {received:,} bytes ({type(e).__name__}); "
                              f"resuming in {_seconds(wait)} (retry {interruptions + 1} of {self.max_retries})")
                    _sleep(wait)
                    interruptions += 1
                    continue
            finally:
                response.close()
            return self._verify(part, tag_file, path, etag)

    @staticmethod
    def _starts_at(response: httpx.Response, offset: int) -> bool:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        return match is not None and int(match.group(1)) == offset

    @staticmethod
    def _verify(part: Path, tag_file: Path, path: Path, etag: str) -> Path:
        expected = etag.strip().removeprefix("W/").strip('"').lower()
        if not _SHA256.fullmatch(expected):
            _remove(part, tag_file)
            raise IntegrityError(f"the service sent no sha256 ETag (got {etag!r}); the download cannot be "
                                 "verified and was deleted", expected=None)
        digest = hashlib.sha256()
        with part.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            _remove(part, tag_file)
            raise IntegrityError(f"the downloaded file's sha256 {actual} does not match the ETag {expected}; "
                                 "the file was deleted, download it again", expected=expected, actual=actual)
        os.replace(part, path)
        tag_file.unlink(missing_ok=True)
        return path


def _seconds(wait: float) -> str:
    """`30 s`, `0.5 s`: a wait as the retry messages say it."""
    return f"{wait:.0f} s" if wait >= 10 else f"{wait:.1f} s".replace(".0 s", " s")


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
