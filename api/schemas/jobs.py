"""Request and response shapes of /v1/jobs.

`JobCreate` checks types and unknown fields only; ranges, choices and defaults live in one place,
kdcore.spec, and every resolved default is echoed back in `JobOut.spec`. Its section models are
derived from kdcore's dataclasses (`_section`): a field added there appears here, typed strictly
and described by its help (the dataclass field's metadata), with file fields named by jobs.spec_files. Clients never set
tenant, status or attempt: unknown fields are refused (extra="forbid"). Two things no spec check
covers are refused here: NUL characters and non-finite numbers anywhere in the free-form parts of
the body (PostgreSQL cannot store them, and no name or id contains one), and `metadata` over
MAX_METADATA_BYTES (it is stored with the job and written into the student file).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields as dataclass_fields
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, Strict, StrictBool, StrictInt,
                      WithJsonSchema, create_model)

from api.schemas.results import RESULT_SCHEMA
from jobs.routing import queue_for
from jobs.spec_files import FILE_FIELDS
from kdcore.spec import FIELD_HELP, DatasetSpec, Hyperparameters, ResourcesSpec, StudentSpec, TeacherSpec

MAX_METADATA_BYTES = 16 * 1024  # `metadata` as compact JSON
MAX_JSON_DEPTH = 32  # nesting of the free-form objects (metadata, arch_params)


def _storable(value: Any, depth: int = 0) -> Any:
    """Refuse what PostgreSQL's JSONB and text columns cannot hold, in any string, key or number
    of a JSON value: NUL characters and non-finite numbers (Python's json reads NaN and Infinity);
    and absurd nesting."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must hold finite numbers only, not {value}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, depth + 1)
            _storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable(item, depth + 1)
    return value


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    _storable(value)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes as JSON, over the limit of {MAX_METADATA_BYTES} (MAX_METADATA_BYTES)")
    return value


def _number_or_list(value: Any) -> float | list[float]:
    """A number, or a list of numbers (a sweep); ranges, emptiness and duplicates are kdcore's to
    check. One plain validator rather than a Union, so an error names the field itself."""
    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a number or a non-empty list of numbers")
        _storable(float(v))
        return float(v)

    if isinstance(value, list):
        return [number(v) for v in value]
    return number(value)


def _name_or_list(value: Any) -> str | list[str]:
    """A name, or a list of names (hyperparameters.augment); which names is kdcore's to check."""
    def name(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("must be a string or a list of strings")
        return _storable(v)

    if isinstance(value, list):
        return [name(v) for v in value]
    return name(value)


Text = Annotated[str, AfterValidator(_storable)]
NameOrList = Annotated[Any, PlainValidator(_name_or_list), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})]
NumberOrList = Annotated[Any, PlainValidator(_number_or_list), WithJsonSchema(
    {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 1}]})]
Params = Annotated[dict[str, Any], AfterValidator(_storable)]
Metadata = Annotated[dict[str, Any], AfterValidator(_small_metadata)]


StrictFloat = Annotated[float, Strict()]  # an int is a float; true, "1.5" and null-as-number are not

# kdcore's annotation (as written in kdcore/spec.py) -> the request's type. Strict: `"epochs": true`
# or `"baseline": "off"` are 422s, not silently 1 and false.
_TYPES: dict[str, Any] = {
    "str": Text, "str | None": Text, "dict[str, Any]": Params,
    "float | list[float]": NumberOrList, "str | list[str]": NameOrList,
    "int": StrictInt, "int | None": StrictInt, "float": StrictFloat, "float | None": StrictFloat,
    "bool": StrictBool,
}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _section(model_name: str, section: str, cls: type) -> type[_In]:
    """The request model of one spec section, derived from kdcore's dataclass: every field is
    optional (kdcore fills the defaults and checks ranges and choices), described by its help
    (`metadata["help"]`), and file fields take the service's names and file ids (jobs.spec_files).
    Only the teacher's file is required."""
    files = {f.kd: f for f in FILE_FIELDS}
    definitions: dict[str, Any] = {}
    for f in dataclass_fields(cls):
        dotted = f"{section}.{f.name}"
        file = files.get(dotted)
        if file is None:
            definitions[f.name] = (_TYPES[str(f.type)] | None, Field(None, description=f.metadata["help"]))
            continue
        kind = list[Text] if file.many else Text
        described = (f"{'ids of files' if file.many else 'id of a file'} uploaded with purpose "
                     f"{' or '.join(file.purposes)}. {f.metadata['help']}")
        name = file.api.split(".", 1)[1]
        if dotted == "teacher.path":
            definitions[name] = (kind, Field(description=described))
        else:
            definitions[name] = (kind | None, Field(None, description=described))
    return create_model(model_name, __base__=_In, **definitions)


TeacherIn = _section("TeacherIn", "teacher", TeacherSpec)
StudentIn = _section("StudentIn", "student", StudentSpec)
DatasetIn = _section("DatasetIn", "dataset", DatasetSpec)
HyperparametersIn = _section("HyperparametersIn", "hyperparameters", Hyperparameters)
ResourcesIn = _section("ResourcesIn", "resources", ResourcesSpec)


class JobCreate(_In):
    teacher: TeacherIn
    student: StudentIn = Field(default_factory=StudentIn)
    dataset: DatasetIn = Field(default_factory=lambda: DatasetIn(builtin="digits"))
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)
    baseline: StrictBool | None = Field(None, description=FIELD_HELP["baseline"])  # None: kdcore decides
    metadata: Metadata = Field(default_factory=dict, description=FIELD_HELP["metadata"])
    resources: ResourcesIn = Field(default_factory=ResourcesIn,
                                   description="what the job needs from the machine that runs it; routes it to a queue")


class Status(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


class Progress(BaseModel):
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float = 0.0
    eta_seconds: float | None = None


class JobError(BaseModel):
    code: str
    message: str


def _spec_is_a_request(schema: dict[str, Any]) -> None:
    # JobOut.spec has JobCreate's shape; pointed to after generation, where pydantic no longer
    # resolves references (FastAPI lists JobCreate under components/schemas, the request body's)
    schema["properties"]["spec"] = {"$ref": "#/components/schemas/JobCreate",
                                    "description": schema["properties"]["spec"]["description"]}


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra=_spec_is_a_request)

    id: str
    object: str = "job"
    status: Status
    spec: dict[str, Any] = Field(description="the resolved spec: the request's fields with every default filled "
                                             "in (a valid request body itself, for a job like this one)")
    progress: Progress
    attempt: int
    max_attempts: int
    error: JobError | None = None
    result: Annotated[dict[str, Any] | None, WithJsonSchema({"anyOf": [RESULT_SCHEMA, {"type": "null"}]})] = Field(
        None, description="teacher, student and baseline metrics on the evaluation split; agreement, "
                          "compression, speedup, distillation_gain; comparison (student vs baseline on the same "
                          "rows: student_only_right, baseline_only_right, p_value of McNemar's exact test, verdict "
                          "better, worse or not distinguishable at alpha 0.05); warnings (a list of {code: "
                          "near_chance or diverged, model, message, ...})")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    queue: str | None = Field(None, description="the queue the job is routed to (kd.cpu or kd.cuda.<gpus>, from "
                                                "spec.resources)")
    queue_position: int | None = Field(None, description="while queued, in GET /v1/jobs/{id}: how many older "
                                                         "queued jobs wait on the same queue (0 = next)")
    waiting_reason: str | None = Field(None, description="while queued (also in GET /v1/jobs): why no worker takes "
                                                         "it, e.g. no live worker serves its queue; null otherwise")

    @classmethod
    def from_row(cls, row) -> "JobOut":
        error = JobError(code=row.error_code, message=row.error_message or "") if row.error_code else None
        return cls(id=row.id, status=row.status, spec=row.spec, progress=Progress(**(row.progress or {})),
                   attempt=row.attempt, max_attempts=row.max_attempts, error=error, result=row.result,
                   created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
                   updated_at=row.updated_at, queue=queue_for(row.spec))


class JobList(BaseModel):
    object: str = "list"
    data: list[JobOut]
    has_more: bool


class EventOut(BaseModel):
    id: int = Field(description="sequence number within the job; pass as `after` to continue")
    type: str
    level: Literal["info", "warning", "error"] = Field(
        "info", description="info; warning for what the user should look at (a result near chance or a loss that "
                            "diverged, one per item of result.warnings; a failed ONNX export; a damaged checkpoint "
                            "skipped); error for the job's failure")
    message: str
    data: dict[str, Any] | None = None
    attempt: int
    created_at: datetime

    @classmethod
    def from_row(cls, row) -> "EventOut":
        return cls(id=row.seq, type=row.type, level=getattr(row, "level", None) or "info", message=row.message,
                   data=row.data, attempt=row.attempt, created_at=row.created_at)


class EventList(BaseModel):
    object: str = "list"
    data: list[EventOut]
    has_more: bool


class MetricOut(BaseModel):
    run: str
    epoch: int
    values: dict[str, Any]


class MetricList(BaseModel):
    object: str = "list"
    data: list[MetricOut]
