"""The job spec's file fields: one table, and the one function that maps them.

The service's spec names uploaded files by id (`teacher.file_id`, `dataset.unlabeled_file_ids`, ...);
kdcore's spec names the same files by a reference its caller resolves to a local path
(`teacher.path`, `dataset.unlabeled_paths`, ...). `to_kdcore` turns the first into the second,
asking a caller's `resolve` for each id: the API checks ownership and purpose there (and keeps
the id as kdcore's reference while it validates), the worker fetches the file and gives its path.
`to_service` names the fields back for the spec the API stores and echoes.

A new file field is one row here and one field in kdcore/spec.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class FileField:
    api: str  # dotted name in the service's spec
    kd: str  # dotted name in kdcore's spec
    purposes: tuple[str, ...]  # upload purposes the field accepts
    many: bool = False  # a list of files


FILE_FIELDS = (
    FileField("teacher.file_id", "teacher.path", ("teacher", "teacher_logits")),
    FileField("student.init_file_id", "student.init_path", ("student_init",)),
    FileField("dataset.train_file_id", "dataset.train_path", ("dataset",)),
    FileField("dataset.validation_file_id", "dataset.validation_path", ("dataset",)),
    FileField("dataset.test_file_id", "dataset.test_path", ("dataset",)),
    FileField("dataset.unlabeled_file_ids", "dataset.unlabeled_paths", ("dataset",), many=True),
)
_BY_KD = {f.kd: f for f in FILE_FIELDS}

# resolve(field, where, file_id) -> kdcore's reference; `where` names the item ("...ids[2]").
Resolver = Callable[[FileField, str, str], Any]


def to_kdcore(spec: dict[str, Any], resolve: Resolver) -> dict[str, Any]:
    """A copy of a service spec with each file field under kdcore's name and each id resolved.
    Fields the spec leaves out stay out (kdcore fills its defaults)."""
    out = copy.deepcopy(spec)
    for f in FILE_FIELDS:
        value = _pop(out, f.api)
        if value is None:
            continue
        if f.many:
            value = [resolve(f, f"{f.api}[{i}]", file_id) for i, file_id in enumerate(value)]
        else:
            value = resolve(f, f.api, value)
        _put(out, f.kd, value)
    return out


def named_files(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, file id) of every file a service spec names, in FILE_FIELDS order, without copying it."""
    named = []
    for f in FILE_FIELDS:
        head, _, tail = f.api.partition(".")
        section = spec.get(head)
        value = section.get(tail) if isinstance(section, dict) else None
        if value is None:
            continue
        if f.many:
            named.extend((f"{f.api}[{i}]", file_id) for i, file_id in enumerate(value))
        else:
            named.append((f.api, value))
    return named


def to_service(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a kdcore spec dict (its references being file ids) with the service's names."""
    out = copy.deepcopy(spec)
    for f in FILE_FIELDS:
        _put(out, f.api, _pop(out, f.kd))
    return out


def service_field(kd_field: str | None) -> str | None:
    """The service's name for a field kdcore named: file fields renamed, a list item's index kept
    ("dataset.unlabeled_paths[1]" -> "dataset.unlabeled_file_ids[1]"); others as they are."""
    if kd_field is None:
        return None
    name, bracket, rest = kd_field.partition("[")
    f = _BY_KD.get(name)
    return (f.api if f else name) + bracket + rest


def _pop(d: dict, dotted: str):
    head, _, tail = dotted.partition(".")
    section = d.get(head)
    if not tail:
        return d.pop(head, None)
    return section.pop(tail, None) if isinstance(section, dict) else None


def _put(d: dict, dotted: str, value) -> None:
    head, _, tail = dotted.partition(".")
    d.setdefault(head, {})[tail] = value
