"""FakeService: a stand-in for the service behind an httpx.MockTransport, for the client tests (the
`fake_service` and `kd_fake` fixtures in tests/client/conftest.py are built on it; tests that need
another result or more events subclass it)."""

from __future__ import annotations

import httpx

from kdclient import Client
from tests.utils import API_KEY


class FakeService:
    """A stand-in for the service behind an httpx.MockTransport: it records every request (method, path,
    JSON body, multipart purpose and file name) and answers like the API would, so tests can check the
    exact request a flag produces without depending on what the server accepts yet."""

    def __init__(self, job_result: dict | None = None, job_spec: dict | None = None):
        self.requests: list[dict] = []
        self.uploads = 0
        self.refuse_jobs: dict | None = None  # a problem body: POST /v1/jobs answers it as a 422
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.job_result = job_result
        self.job_spec = job_spec
        self.student = b"student bytes"

    def file(self, file_id: str, **info) -> dict:
        f = {"id": file_id, "purpose": "dataset", "format": "npz", "filename": f"{file_id}.npz", "bytes": 10,
             "sha256": "0" * 64, "created_at": "2026-01-01T00:00:00+00:00", **info}
        self.files[file_id] = f
        return f

    def job(self, job_id: str, status: str, spec: dict) -> dict:
        job = {"id": job_id, "status": status, "spec": spec, "attempt": 1, "max_attempts": 3,
               "progress": {"phase": "done", "fraction": 1.0 if status == "succeeded" else 0.0},
               "result": self.job_result if status == "succeeded" else None,
               "created_at": "2026-01-01T00:00:00+00:00"}
        self.jobs[job_id] = job
        return job

    def handler(self, request: httpx.Request) -> httpx.Response:
        import hashlib
        import json
        import re

        path, method = request.url.path, request.method
        entry: dict = {"method": method, "path": path}
        self.requests.append(entry)
        if method == "POST" and path == "/v1/files":
            body = request.read()
            purpose = re.search(rb'name="purpose"\r\n\r\n([^\r]*)', body).group(1).decode()
            filename = re.search(rb'name="file"; filename="([^"]*)"', body).group(1).decode()
            content = re.search(rb'filename="[^"]*"\r\n(?:[^\r]*\r\n)*\r\n(.*?)\r\n--', body, re.S).group(1)
            entry.update(purpose=purpose, filename=filename)
            self.uploads += 1
            f = self.file(f"file_{self.uploads}", purpose=purpose, num_samples=1193, num_labeled=0,
                          input_shape=[64], sha256=hashlib.sha256(content).hexdigest())
            f["filename"] = filename
            return httpx.Response(201, json=f)
        if method == "GET" and path == "/v1/files":
            wanted = {k: request.url.params[k] for k in ("purpose", "sha256") if k in request.url.params}
            data = [f for f in self.files.values() if all(f[k] == v for k, v in wanted.items())]
            return httpx.Response(200, json={"data": data[::-1], "has_more": False})
        if method == "DELETE" and path.startswith("/v1/files/"):
            del self.files[path.rsplit("/", 1)[1]]
            return httpx.Response(204)
        if method == "GET" and path.startswith("/v1/files/"):
            return httpx.Response(200, json=self.files[path.rsplit("/", 1)[1]])
        if method == "POST" and path == "/v1/jobs":
            entry["json"] = json.loads(request.read())
            if self.refuse_jobs is not None:
                return httpx.Response(422, json=self.refuse_jobs, headers={"content-type": "application/problem+json"})
            return httpx.Response(201, json=self.job(f"job_{len(self.jobs) + 1}", "queued",
                                                     self.job_spec or entry["json"]))
        if method == "GET" and path == "/v1/jobs":
            return httpx.Response(200, json={"data": list(self.jobs.values())[::-1], "has_more": False})
        if method == "GET" and path.endswith("/events"):
            return httpx.Response(200, json={"data": [], "has_more": False})
        if method == "GET" and path.endswith("/student"):
            etag = '"' + hashlib.sha256(self.student).hexdigest() + '"'
            return httpx.Response(200, content=self.student, headers={"ETag": etag})
        if method == "GET" and path.startswith("/v1/jobs/"):
            job = self.jobs[path.rsplit("/", 1)[1]]
            return httpx.Response(200, json=self.job(job["id"], "succeeded", job["spec"]))
        return httpx.Response(404, json={"title": "Not Found", "detail": f"no route {method} {path}"})

    def client(self) -> Client:
        return Client("http://kd.test", api_key=API_KEY, max_retries=0,
                      http_client=httpx.Client(base_url="http://kd.test", transport=httpx.MockTransport(self.handler)))

    def posted(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


FEW_LABELS_RESULT = {
    "evaluated_on": "validation", "num_eval_samples": 180, "teacher": {"accuracy": None, "parameters": 82_186},
    "student": {"accuracy": None, "agreement": 0.912, "parameters": 1_210,
                "train_rows": {"labeled": 100, "unlabeled": 1193}, "steps": 220},
    "baseline": {"accuracy": None, "agreement": 0.611, "train_rows": {"labeled": 100, "unlabeled": 0}, "steps": 220},
    "distillation_gain": None, "compression": 67.9, "speedup": 3.1}


