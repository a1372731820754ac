"""Request and response shapes of /v1/files."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from kdcore.formats import ACCEPTED_FORMATS


# The upload purposes are kdcore's (kdcore/formats.py ACCEPTED_FORMATS): one list, here as an enum.
Purpose = Enum("Purpose", {name: name for name in ACCEPTED_FORMATS}, type=str)


class FileOut(BaseModel):
    id: str
    object: str = "file"
    purpose: Purpose
    format: str
    filename: str
    bytes: int
    sha256: str
    created_at: datetime
    num_samples: int | None = None
    input_shape: list[Any] | None = None
    num_classes: int | None = None
    parameters: int | None = None
    label_histogram: list[int] | None = None
    num_labeled: int | None = Field(None, description="datasets: rows with a label (the others are inputs only: "
                                                       "an .npz with x only, a table without a label column, "
                                                       "or label -1)")
    kind: str | None = None  # teachers: state_dict, onnx or logits

    @classmethod
    def from_row(cls, row) -> "FileOut":
        info = row.info or {}
        return cls(id=row.id, purpose=row.purpose, format=row.format, filename=row.filename, bytes=row.bytes,
                   sha256=row.sha256, created_at=row.created_at,
                   # a dataset described before unlabelled rows existed had every row labelled
                   num_labeled=info.get("num_labeled", info.get("num_samples") if row.purpose == "dataset" else None),
                   **{k: info.get(k) for k in ("num_samples", "input_shape", "num_classes", "parameters",
                                               "label_histogram", "kind")})


class FileList(BaseModel):
    object: str = "list"
    data: list[FileOut]
    has_more: bool
