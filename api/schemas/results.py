"""The JSON Schema of a job's `result`, derived from kdcore's typed result (kdcore/results.py).

The API stores and returns the result as the worker wrote it (`DistillResult.to_dict()`), without
parsing it again on every read; this schema only documents it, in /openapi.json. It is built from
the dataclasses by pydantic, with each field described by its help (the field's metadata) and every
reference inlined, so it stands alone inside the job's schema.
"""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass
from typing import Any

from pydantic import TypeAdapter

from kdcore import results

_CLASSES = {name: cls for name, cls in vars(results).items() if isinstance(cls, type) and is_dataclass(cls)}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return {**_inline(defs[name], defs), **{k: v for k, v in node.items() if k != "$ref"}}
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _described(defs: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defs)
    for name, schema in out.items():
        cls = _CLASSES.get(name)
        if cls is None:
            continue
        for f in fields(cls):
            if f.name in schema.get("properties", {}) and f.metadata.get("help"):
                schema["properties"][f.name]["description"] = f.metadata["help"]
    return out


def result_schema() -> dict[str, Any]:
    """`DistillResult.to_dict()`'s schema, self-contained (no $ref), every field described."""
    schema = TypeAdapter(results.DistillResult).json_schema()
    defs = _described({**schema.pop("$defs", {}), "DistillResult": schema})
    top = _inline(defs["DistillResult"], defs)
    top["properties"]["agreement"] = {"anyOf": [{"type": "number"}, {"type": "null"}],
                                      "description": "the student's agreement with the teacher (as student.agreement)"}
    return top


RESULT_SCHEMA = result_schema()
