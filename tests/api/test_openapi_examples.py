"""Every operation with a request body has a request example in /openapi.json (what /docs' "Try it
out" starts from), and each example works: sent to the API (in-process, real PostgreSQL), it is
accepted. A job example names a teacher by a placeholder (api/schemas/examples.py); sent as it is,
it is refused on `teacher.file_id` alone, and with an uploaded teacher's id in its place it is a 201."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

from api.schemas.examples import TEACHER_ID_PLACEHOLDER
from api.schemas.jobs import JobCreate
from tests.utils import problem


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def request_examples(spec: dict) -> dict[tuple[str, str], list[tuple[str, str, Any]]]:
    """(METHOD, path) of each operation with a body -> [(example name, media type, value), ...]:
    the media type's `examples` and `example`, and its schema's own `examples`."""
    found: dict[tuple[str, str], list[tuple[str, str, Any]]] = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if "requestBody" not in op:
                continue
            examples = found.setdefault((method.upper(), path), [])
            for media, content in op["requestBody"]["content"].items():
                examples += [(name, media, ex["value"]) for name, ex in (content.get("examples") or {}).items()]
                if "example" in content:
                    examples.append(("example", media, content["example"]))
                schema = _resolve(spec, content.get("schema") or {})
                examples += [(f"schema[{i}]", media, ex) for i, ex in enumerate(schema.get("examples") or [])]
    return found


@pytest.fixture
def openapi(client) -> dict:
    return client.get("/openapi.json").json()


def test_every_operation_with_a_body_has_an_example(openapi):
    examples = request_examples(openapi)
    assert {"POST /v1/jobs", "POST /v1/files"} <= {" ".join(op) for op in examples}
    missing = [" ".join(op) for op, found in examples.items() if not found]
    assert not missing, f"operations without a request example: {missing}"


@pytest.fixture
def demo_teacher(tmp_path):
    """A teacher of the examples' architecture (make demo's: MLP [256, 256] on 64 inputs, 10 classes);
    its weights do not matter to a submission."""
    from kdcore.models import build_model

    path = tmp_path / "teacher.safetensors"
    model = build_model("mlp", {"hidden_sizes": [256, 256]}, input_shape=(64,), num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _replace(value: Any, old: str, new: str) -> Any:
    return json.loads(json.dumps(value).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


def test_every_example_is_accepted(client, openapi, demo_teacher, tmp_path):
    dataset = tmp_path / "data.npz"
    np.savez(dataset, x=np.random.default_rng(0).random((40, 64), dtype=np.float32), y=np.arange(40) % 10)
    with demo_teacher.open("rb") as f:
        teacher_id = client.post("/v1/files", files={"file": ("teacher.safetensors", f)},
                                 data={"purpose": "teacher"}).json()["id"]
    checked = 0
    for (method, path), examples in request_examples(openapi).items():
        for name, media, value in examples:
            where = f"{method} {path} example {name!r}"
            if (method, path) == ("POST", "/v1/files"):
                assert media == "multipart/form-data" and set(value) == {"purpose"}, where
                upload = dataset if value["purpose"] == "dataset" else demo_teacher
                with upload.open("rb") as f:
                    resp = client.post(path, files={"file": (upload.name, f)}, data=value)
                assert resp.status_code == 201, (where, resp.text)
            elif (method, path) == ("POST", "/v1/jobs"):
                JobCreate.model_validate(value)  # the request model takes it as it is
                as_is = problem(client.post(path, json=value), 422)
                assert {e["field"] for e in as_is["errors"]} == {"teacher.file_id"}, (where, as_is)
                resp = client.post(path, json=_replace(value, TEACHER_ID_PLACEHOLDER, teacher_id))
                assert resp.status_code == 201, (where, resp.text)
                assert client.post(f"{path}/{resp.json()['id']}/cancel").status_code == 200  # the jobs quota
            elif (method, path) == ("POST", "/v1/webhooks"):
                resp = client.post(path, json=copy.deepcopy(value))
                assert resp.status_code == 201, (where, resp.text)
                assert client.delete(f"{path}/{resp.json()['id']}").status_code == 204
            elif (method, path) == ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"):
                hook = client.post("/v1/webhooks", json={"url": "https://example.com/kd-events"}).json()
                resp = client.post(path.format(webhook_id=hook["id"]), json=copy.deepcopy(value))
                assert resp.status_code == 200 and resp.json()["secret"] != hook["secret"], (where, resp.text)
                assert client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
            else:
                pytest.fail(f"{where}: this test does not know how to send it yet; add the operation here")
            checked += 1
    assert checked >= 5
