"""Request and response shapes of /v1/jobs.

`JobCreate` checks types and unknown fields only; ranges, choices and defaults live in one place,
kdcore.spec, and every resolved default is echoed back in `JobOut.spec`. Clients never set
tenant, status or attempt: unknown fields are refused (extra="forbid"). Two things no spec check
covers are refused here: NUL characters and non-finite numbers anywhere in the free-form parts of
the body (PostgreSQL cannot store them, and no name or id contains one), and `metadata` over
MAX_METADATA_BYTES (it is stored with the job and written into the student file).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from jobs.routing import queue_for
from kdcore.spec import FIELD_HELP

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


def _help(name: str, *, file_id: bool = False) -> str:
    text = FIELD_HELP[name]
    return f"id of an uploaded file (purpose {file_id}); " + text if file_id else text


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherIn(_In):
    file_id: Text = Field(description="id of a file uploaded with purpose teacher or teacher_logits. "
                                     + FIELD_HELP["teacher.path"])
    arch: Text | None = Field(None, description=FIELD_HELP["teacher.arch"])
    arch_params: Params | None = Field(None, description=FIELD_HELP["teacher.arch_params"])


class StudentIn(_In):
    arch: Text | None = Field(None, description=FIELD_HELP["student.arch"])
    arch_params: Params | None = Field(None, description=FIELD_HELP["student.arch_params"])
    init_file_id: Text | None = Field(None, description="id of a file uploaded with purpose student_init. "
                                                       + FIELD_HELP["student.init_path"])


class DatasetIn(_In):
    builtin: Text | None = Field(None, description=FIELD_HELP["dataset.builtin"])
    train_file_id: Text | None = Field(None, description="id of a dataset file. " + FIELD_HELP["dataset.train_path"])
    validation_file_id: Text | None = Field(None, description=FIELD_HELP["dataset.validation_path"])
    test_file_id: Text | None = Field(None, description=FIELD_HELP["dataset.test_path"])
    validation_fraction: float | None = Field(None, description=FIELD_HELP["dataset.validation_fraction"])
    standardize: bool | None = Field(None, description=FIELD_HELP["dataset.standardize"])
    unlabeled_file_ids: list[Text] | None = Field(None, description="ids of dataset files (purpose dataset). "
                                                  + FIELD_HELP["dataset.unlabeled_paths"])
    labels_per_class: int | None = Field(None, description=FIELD_HELP["dataset.labels_per_class"])


class HyperparametersIn(_In):
    temperature: NumberOrList | None = Field(None, description=FIELD_HELP["hyperparameters.temperature"])
    alpha: NumberOrList | None = Field(None, description=FIELD_HELP["hyperparameters.alpha"])
    loss: Text | None = Field(None, description=FIELD_HELP["hyperparameters.loss"])
    epochs: int | None = Field(None, description=FIELD_HELP["hyperparameters.epochs"])
    batch_size: int | None = Field(None, description=FIELD_HELP["hyperparameters.batch_size"])
    learning_rate: float | None = Field(None, description=FIELD_HELP["hyperparameters.learning_rate"])
    weight_decay: float | None = Field(None, description=FIELD_HELP["hyperparameters.weight_decay"])
    optimizer: Text | None = Field(None, description=FIELD_HELP["hyperparameters.optimizer"])
    momentum: float | None = Field(None, description=FIELD_HELP["hyperparameters.momentum"])
    schedule: Text | None = Field(None, description=FIELD_HELP["hyperparameters.schedule"])
    step_size: int | None = Field(None, description=FIELD_HELP["hyperparameters.step_size"])
    gamma: float | None = Field(None, description=FIELD_HELP["hyperparameters.gamma"])
    grad_clip_norm: float | None = Field(None, description=FIELD_HELP["hyperparameters.grad_clip_norm"])
    seed: int | None = Field(None, description=FIELD_HELP["hyperparameters.seed"])
    augment: NameOrList | None = Field(None, description=FIELD_HELP["hyperparameters.augment"])
    noise_std: float | None = Field(None, description=FIELD_HELP["hyperparameters.noise_std"])
    shift_max: int | None = Field(None, description=FIELD_HELP["hyperparameters.shift_max"])
    mixup_alpha: float | None = Field(None, description=FIELD_HELP["hyperparameters.mixup_alpha"])
    device: Text | None = Field(None, description=FIELD_HELP["hyperparameters.device"])
    early_stopping_patience: int | None = Field(None, description=FIELD_HELP["hyperparameters.early_stopping_patience"])
    restore_best: bool | None = Field(None, description=FIELD_HELP["hyperparameters.restore_best"])


class ResourcesIn(_In):
    device: Text | None = Field(None, description=FIELD_HELP["resources.device"])
    gpus: int | None = Field(None, description=FIELD_HELP["resources.gpus"])
    processes: int | None = Field(None, description=FIELD_HELP["resources.processes"])


class JobCreate(_In):
    teacher: TeacherIn
    student: StudentIn = Field(default_factory=StudentIn)
    dataset: DatasetIn = Field(default_factory=lambda: DatasetIn(builtin="digits"))
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)
    baseline: bool | None = Field(None, description=FIELD_HELP["baseline"])  # None: kdcore decides (true unless no row is labelled)
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


class JobOut(BaseModel):
    id: str
    object: str = "job"
    status: Status
    spec: dict[str, Any] = Field(description="the resolved spec: every default filled in")
    progress: Progress
    attempt: int
    max_attempts: int
    error: JobError | None = None
    result: dict[str, Any] | None = Field(
        None, description="teacher, student and baseline metrics on the evaluation split; agreement, "
                          "compression, speedup, distillation_gain")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    queue: str | None = Field(None, description="the queue the job is routed to (kd.cpu or kd.cuda.<gpus>, from "
                                                "spec.resources)")
    queue_position: int | None = Field(None, description="while queued, in GET /v1/jobs/{id}: how many older "
                                                         "queued jobs wait on the same queue (0 = next)")
    waiting_reason: str | None = Field(None, description="while queued, in GET /v1/jobs/{id}: why no worker takes "
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
    message: str
    data: dict[str, Any] | None = None
    attempt: int
    created_at: datetime

    @classmethod
    def from_row(cls, row) -> "EventOut":
        return cls(id=row.seq, type=row.type, message=row.message, data=row.data, attempt=row.attempt,
                   created_at=row.created_at)


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
