"""What an uploaded file is, decided from its content by kdcore's inspection functions.
A file that is not what its purpose needs is a 422 with kdcore's reason; nothing is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcore.data import inspect_dataset_file
from kdcore.errors import FormatError, KDError
from kdcore.formats import ACCEPTED_FORMATS, sniff_format
from kdcore.teachers import inspect_teacher_file

FORMATS_BY_PURPOSE = {
    "teacher": ("safetensors", "onnx"),
    "teacher_logits": ("npz", "safetensors"),
    "dataset": ("npz", "parquet", "csv"),
    "student_init": ("safetensors",),
}


def inspect_upload(path: Path, purpose: str) -> tuple[str, dict[str, Any]]:
    """(format, info) for a file of this purpose; raises a KDError with field "file" otherwise."""
    try:
        fmt = sniff_format(path)
        if fmt not in FORMATS_BY_PURPOSE[purpose]:
            raise FormatError(f"a {fmt} file cannot be a {purpose}; accepted: {ACCEPTED_FORMATS[purpose]}")
        if purpose == "dataset":
            return fmt, inspect_dataset_file(path).to_dict()
        info = inspect_teacher_file(path, purpose=purpose)
        wanted = {"teacher": ("state_dict", "onnx"), "teacher_logits": ("logits",),
                  "student_init": ("state_dict",)}[purpose]
        if info.get("kind") not in wanted:
            raise FormatError(f"this {fmt} file holds {info.get('kind')}, not a {purpose}; "
                              f"accepted: {ACCEPTED_FORMATS[purpose]}")
        return fmt, info
    except KDError as e:
        raise type(e)(e.message, field="file") from None
