"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis, in-process
ASGI, real PostgreSQL and Redis): for every operation, schema-valid and schema-invalid requests,
a bounded and derandomised number of each. No answer may be a 5xx; every answer must be a
documented status with the documented content type, headers and body schema; invalid input must
be refused with a 4xx. Fields a client must never set (tenant_id, status, attempt, ...) are 422s
wherever they are slipped in."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.utils import API_KEY, problem, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAX_EXAMPLES = 25  # per operation and generation mode: 13 operations x 2 modes in well under 90 s
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
FORBIDDEN_FIELDS = {"tenant_id": "someone", "tenant": "someone", "status": "succeeded", "attempt": 7,
                    "id": "job_x", "result": {}, "max_attempts": 99, "lease_until": "2030-01-01T00:00:00Z"}


@pytest.fixture
def seeded(client, digits_teacher) -> dict[str, str]:
    """A file and a job, so listings and ids have something real behind them."""
    file_id = upload(client, digits_teacher[0], "teacher").json()["id"]
    job = client.post("/v1/jobs", json={"teacher": {"file_id": file_id, "arch": "mlp",
                                                    "arch_params": {"hidden_sizes": [128]}},
                                        "hyperparameters": {"epochs": 1}})
    assert job.status_code == 201, job.text
    return {"file_id": file_id, "job_id": job.json()["id"]}


@pytest.mark.slow
def test_every_operation_survives_fuzzing_and_conforms_to_its_schema(client, seeded):
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

            @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                response = case.call(headers=AUTH)
                case_checks = checks
                if mode is GenerationMode.NEGATIVE and "Authorization" not in (case.headers or {}):
                    # The case may be "invalid" only by lacking the API key, which AUTH puts back:
                    # then the request sent is valid and a 2xx is right (schemathesis would call it
                    # a schema-violating request accepted). Everything else is still checked.
                    case_checks = CHECKS
                case.validate_response(response, checks=case_checks, headers=AUTH)

            try:
                fuzz()
            except Unsatisfiable:  # nothing can be invalid about it (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # one failure per operation and mode, all reported
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {exc}"[:4000])
    assert operations >= 13
    assert not failures, "\n\n".join(failures)
    # and the service is still whole afterwards
    assert client.get(f"/v1/jobs/{seeded['job_id']}").status_code == 200


def test_fields_a_client_must_not_set_are_refused(client, seeded):
    for where in ("top", "teacher", "student", "dataset", "hyperparameters"):
        for field, value in FORBIDDEN_FIELDS.items():
            body = {"teacher": {"file_id": seeded["file_id"], "arch": "mlp", "arch_params": {"hidden_sizes": [128]}},
                    "hyperparameters": {"epochs": 1}}
            (body if where == "top" else body.setdefault(where, {}))[field] = value
            err = problem(client.post("/v1/jobs", json=body), 422)
            assert err["errors"][0]["field"] == (field if where == "top" else f"{where}.{field}"), err
    assert len(client.get("/v1/jobs").json()["data"]) == 1  # only the seeded job


def test_upload_form_fields_a_client_must_not_set_are_refused(client):
    for field in ("tenant_id", "status", "attempt", "id", "sha256", "bytes", "format", "filename"):
        resp = client.post("/v1/files", files={"file": ("d.csv", b"f0,label\n1,0\n2,1\n")},
                           data={"purpose": "dataset", field: "x"})
        err = problem(resp, 422)
        assert err["errors"][0]["field"] == field and "not accepted" in err["detail"], err
    assert client.get("/v1/files").json()["data"] == []


# ---- what fuzzing and probing found (each was a 500 or was stored) ----

def _multipart(filename: bytes, content: bytes = b"f0,label\n1,0\n2,1\n") -> tuple[bytes, dict]:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename + b"\"\r\n\r\n"
            + content + b"\r\n--XyZ--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=XyZ"}


@pytest.mark.parametrize("sent, kept", [
    (b"a\x00b.csv", "ab.csv"),  # PostgreSQL text cannot hold NUL: was a 500
    (b"x" * 300 + b".csv", "x" * 251 + ".csv"),  # files.filename is 255 characters: was a 500
    (b"../../etc/passwd", "passwd"),
    (b"C:\\Users\\me\\teacher.csv", "teacher.csv"),
    (b"evil\xe2\x80\xaetxt.exe", "eviltxt.exe"),  # a right-to-left override hides the real extension
    (b"..", "upload"),
], ids=["nul", "long", "path", "windows-path", "rtl-override", "dotdot"])
def test_upload_file_names_are_kept_as_clean_display_names(client, sent, kept):
    body, headers = _multipart(sent)
    resp = client.post("/v1/files", content=body, headers=headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["filename"] == kept
    download = client.get(f"/v1/files/{resp.json()['id']}/content")
    assert download.status_code == 200 and "\r" not in download.headers["content-disposition"]


@pytest.mark.parametrize("part, field", [
    ({"metadata": {"note": "a\u0000b"}}, "metadata"),  # JSONB cannot hold \u0000: was a 500
    ({"metadata": {"a\u0000": 1}}, "metadata"),
    ({"metadata": {"k": "x" * 20_000}}, "metadata"),  # was stored, and written into the student file
    ({"teacher": {"file_id": "file_\u0000"}}, "teacher.file_id"),  # looked up in PostgreSQL: was a 500
    ({"dataset": {"train_file_id": "\u0000"}}, "dataset.train_file_id"),
    ({"teacher": {"arch_params": {"hidden_sizes": [128], "\u0000": 1}}}, "teacher.arch_params"),
], ids=["metadata-nul-value", "metadata-nul-key", "metadata-too-big", "file-id-nul", "dataset-id-nul",
        "arch-params-nul"])
def test_unstorable_json_is_a_422_naming_the_field(client, seeded, part, field):
    body = {"teacher": {"file_id": seeded["file_id"], "arch": "mlp", "arch_params": {"hidden_sizes": [128]}},
            "hyperparameters": {"epochs": 1}}
    for key, value in part.items():
        body[key] = {**body.get(key, {}), **value}
    err = problem(client.post("/v1/jobs", json=body), 422)
    assert err["errors"][0]["field"] == field, err


def test_non_finite_metadata_is_a_422(client, seeded):
    raw = ('{"teacher": {"file_id": "%s", "arch": "mlp", "arch_params": {"hidden_sizes": [128]}}, '
           '"metadata": {"k": NaN}}' % seeded["file_id"])  # Python's json reads NaN; JSONB does not: was a 500
    err = problem(client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"}), 422)
    assert err["errors"][0]["field"] == "metadata" and "finite" in err["detail"]


def test_nul_in_an_id_is_not_a_500(client):
    answers = {}
    for method, url in [("GET", "/v1/files/%00"), ("GET", "/v1/files/%00/content"), ("DELETE", "/v1/files/%00"),
                        ("GET", "/v1/jobs/%00"), ("POST", "/v1/jobs/%00/cancel"), ("GET", "/v1/jobs/%00/events"),
                        ("GET", "/v1/jobs/%00/metrics"), ("GET", "/v1/jobs/%00/student"),
                        ("GET", "/v1/files?after=%00"), ("GET", "/v1/jobs?after=%00")]:
        answers[f"{method} {url}"] = client.request(method, url).status_code
    assert all(status in (404, 422) for status in answers.values()), answers


def _hostile_cases(seeded: dict[str, str]) -> list[tuple[str, str, dict]]:
    """The shapes issue 16 item 7 found by hand, which the generated cases above never built:
    ids past PostgreSQL's integer column, a Range of thousands of digits, a lone surrogate in a
    spec key (`Last-Event-ID` past it is an SSE-only header, covered in
    tests/reliability/test_no_tenant_freezes_the_api.py: schemathesis sends its own Accept). Kept here as schemathesis cases, so each is checked against the documented
    statuses, content types and schemas like the generated ones (no 5xx, a 4xx problem)."""
    job, file = {"job_id": seeded["job_id"]}, {"file_id": seeded["file_id"]}
    spec = {"teacher": {"file_id": seeded["file_id"], "arch": "mlp", "arch_params": {"hidden_sizes": [128]}},
            "student": {"arch": "mlp", "arch_params": {"\ud800": 1}}}
    return [
        ("/v1/jobs/{job_id}/events", "GET", {"path_parameters": job, "query": {"after": 2**31}}),
        ("/v1/jobs/{job_id}/events", "GET", {"path_parameters": job, "query": {"after": 2**63}}),
        ("/v1/files/{file_id}/content", "GET", {"path_parameters": file,
                                                 "headers": {"Range": "bytes=" + "9" * 4400 + "-"}}),
        ("/v1/files/{file_id}/content", "GET", {"path_parameters": file,
                                                 "headers": {"Range": "bytes=0-" + "9" * 4400}}),
        ("/v1/jobs", "POST", {"body": spec, "media_type": "application/json"}),
    ]


def test_the_shapes_found_by_hand_conform_as_schemathesis_cases(client, seeded):
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    for path, method, parts in _hostile_cases(seeded):
        case = schema[path][method].Case(**parts)
        response = case.call(headers=AUTH)
        assert 400 <= response.status_code < 500, (path, parts, response.status_code, response.text[:500])
        case.validate_response(response, checks=CHECKS, headers=AUTH)
