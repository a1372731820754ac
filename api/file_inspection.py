"""What an uploaded file is, decided from its content by kdcore's inspection functions.
A file that is not what its purpose needs is a 422 with kdcore's reason; nothing is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcore.data import inspect_dataset_file
from kdcore.errors import FormatError, KDError
from kdcore.formats import accepted_message, check_format
from kdcore.teachers import inspect_teacher_file

TEACHER_KINDS = {"teacher": ("state_dict", "onnx"), "teacher_logits": ("logits",), "student_init": ("state_dict",)}


def inspect_upload(path: Path, purpose: str) -> tuple[str, dict[str, Any]]:
    """(format, info) for a file of this purpose; raises a KDError with field "file" otherwise."""
    try:
        fmt = check_format(path, purpose)
        if purpose == "dataset":
            return fmt, inspect_dataset_file(path).to_dict()
        info = inspect_teacher_file(path, purpose=purpose)
        if info.get("kind") not in TEACHER_KINDS[purpose]:
            raise FormatError(f"this {fmt} file holds {info.get('kind')}, not a {purpose}; "
                              f"{accepted_message(purpose)}")
        return fmt, info
    except KDError as e:
        raise type(e)(e.message, field="file") from None
