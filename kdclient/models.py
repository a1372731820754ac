"""Typed results of the API: plain dataclasses built from its JSON.

Unknown fields are ignored (a newer server may add some) and every object keeps the JSON it came
from in `raw`, so nothing the server says is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
"""A job in one of these states changes no more."""


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # an unexpected format: keep going, `raw` still has the text
        return None


@dataclass(frozen=True)
class File:
    """An uploaded file (`GET /v1/files/{id}`)."""

    id: str
    purpose: str
    format: str
    filename: str
    bytes: int
    sha256: str
    created_at: datetime | None
    num_samples: int | None = None
    input_shape: list[Any] | None = None
    num_classes: int | None = None
    parameters: int | None = None
    label_histogram: list[int] | None = None
    kind: str | None = None
    num_labeled: int | None = None  # datasets: rows with a label (the rest are inputs for the teacher)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "File":
        return cls(id=d["id"], purpose=d.get("purpose", ""), format=d.get("format", ""),
                   filename=d.get("filename", ""), bytes=d.get("bytes", 0), sha256=d.get("sha256", ""),
                   created_at=_time(d.get("created_at")), num_samples=d.get("num_samples"),
                   input_shape=d.get("input_shape"), num_classes=d.get("num_classes"),
                   parameters=d.get("parameters"), label_histogram=d.get("label_histogram"),
                   kind=d.get("kind"), num_labeled=d.get("num_labeled"), raw=d)


@dataclass(frozen=True)
class Progress:
    """Where a job stands: `fraction` 0..1 over the whole job, the phase, epoch and step."""

    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float = 0.0
    eta_seconds: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Progress":
        d = d or {}
        return cls(phase=d.get("phase"), epoch=d.get("epoch"), epochs=d.get("epochs"), step=d.get("step"),
                   steps=d.get("steps"), fraction=float(d.get("fraction") or 0.0), eta_seconds=d.get("eta_seconds"))


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable `code` and a human `message`."""

    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A distillation job (`GET /v1/jobs/{id}`). `spec` has every default resolved; `result` holds the
    teacher, student and baseline metrics once the job succeeded."""

    id: str
    status: str
    spec: dict[str, Any]
    progress: Progress
    attempt: int
    max_attempts: int
    error: JobError | None
    result: dict[str, Any] | None
    created_at: datetime | None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    queue: str | None = None  # kd.cpu or kd.cuda.<gpus>
    queue_position: int | None = None  # while queued: older queued jobs on the same queue (0 = next)
    waiting_reason: str | None = None  # while queued: why no worker takes it (None: one will)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the status is terminal (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Job":
        err = d.get("error")
        return cls(id=d["id"], status=d.get("status", ""), spec=d.get("spec") or {},
                   progress=Progress.from_dict(d.get("progress")), attempt=d.get("attempt", 0),
                   max_attempts=d.get("max_attempts", 0),
                   error=JobError(code=err.get("code", ""), message=err.get("message", "")) if err else None,
                   result=d.get("result"), created_at=_time(d.get("created_at")),
                   started_at=_time(d.get("started_at")), finished_at=_time(d.get("finished_at")),
                   updated_at=_time(d.get("updated_at")), queue=d.get("queue"),
                   queue_position=d.get("queue_position"), waiting_reason=d.get("waiting_reason"), raw=d)


@dataclass(frozen=True)
class Event:
    """One entry of a job's event log; `id` is its sequence number within the job, `level` info,
    warning or error (info from a server that does not send one)."""

    id: int
    type: str
    message: str
    data: dict[str, Any] | None
    attempt: int
    created_at: datetime | None
    level: str = "info"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(id=d["id"], type=d.get("type", ""), message=d.get("message", ""), data=d.get("data"),
                   attempt=d.get("attempt", 0), created_at=_time(d.get("created_at")),
                   level=d.get("level") or "info")


@dataclass(frozen=True)
class Metric:
    """One epoch of one run (`student` or `baseline`): train_loss, val_accuracy, lr, seconds, ..."""

    run: str
    epoch: int
    values: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metric":
        return cls(run=d["run"], epoch=d["epoch"], values=d.get("values") or {})


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list. Pass `next_after` as `after` to get the next page (None on the last)."""

    data: list[T]
    has_more: bool

    @property
    def next_after(self) -> str | None:
        return getattr(self.data[-1], "id", None) if self.has_more and self.data else None

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
