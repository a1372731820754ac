"""From a `JobCreate` body to a resolved spec that can run, or a 422 naming the field.

Defaults and ranges come from kdcore.spec (one source of truth); shapes, classes and teacher
weights are checked against the uploaded files' stored descriptions and headers. The stored spec
keeps file ids; the worker turns them into paths.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.schemas.jobs import JobCreate
from jobs import files_repo
from jobs.artifact_store import ArtifactStore
from jobs.errors import NotFound
from kdcore.errors import KDError, SpecError
from kdcore.spec import DistillSpec
from kdcore.spec_checks import (DataInfo, builtin_info, check_state_dict_teacher, check_student,
                                check_teacher_info)

# kdcore's spec names paths; the service's names file ids. (api field, kdcore field, purposes)
FILE_FIELDS = (
    ("teacher.file_id", "teacher.path", ("teacher", "teacher_logits")),
    ("student.init_file_id", "student.init_path", ("student_init",)),
    ("dataset.train_file_id", "dataset.train_path", ("dataset",)),
    ("dataset.validation_file_id", "dataset.validation_path", ("dataset",)),
    ("dataset.test_file_id", "dataset.test_path", ("dataset",)),
)
KD_TO_API_FIELD = {kd: api for api, kd, _ in FILE_FIELDS}


def resolve_spec(session: Session, *, tenant_id: str, body: JobCreate, store: ArtifactStore) -> dict[str, Any]:
    """The resolved spec (every default filled in, file ids kept) or a SpecError naming the field."""
    raw = body.model_dump(exclude_none=True)
    rows = {}
    for api_field, kd_field, purposes in FILE_FIELDS:
        file_id = _pop(raw, api_field)
        if file_id is None:
            continue
        rows[api_field] = row = _own_file(session, tenant_id, file_id, api_field, purposes)
        _put(raw, kd_field, row.storage_key)  # a stand-in: nothing here reads the file but a state-dict teacher
    try:
        spec = DistillSpec.from_dict(raw)
        data = _data_info(spec, rows)
        spec.student.arch_params = check_student(spec.student.arch, spec.student.arch_params, data)
        _check_teacher(spec, rows["teacher.file_id"], data, store)
    except KDError as e:
        raise SpecError(e.message, field=KD_TO_API_FIELD.get(e.field, e.field)) from None

    resolved = spec.to_dict()
    for api_field, kd_field, _ in FILE_FIELDS:
        _pop(resolved, kd_field)
        _put(resolved, api_field, rows[api_field].id if api_field in rows else None)
    return resolved


def _own_file(session: Session, tenant_id: str, file_id: str, field: str, purposes: tuple[str, ...]):
    try:
        row = files_repo.get(session, tenant_id=tenant_id, file_id=file_id)
    except NotFound:
        # Another tenant's file reads exactly like a missing one.
        raise SpecError(f"no file {file_id!r}", field=field) from None
    if row.purpose not in purposes:
        raise SpecError(f"file {file_id!r} was uploaded as {row.purpose}; this field needs "
                        f"{' or '.join(purposes)}", field=field)
    return row


def _data_info(spec: DistillSpec, rows: dict) -> DataInfo:
    if spec.dataset.builtin is not None:
        return builtin_info(spec.dataset.builtin)
    info = rows["dataset.train_file_id"].info
    data = DataInfo(tuple(info["input_shape"]), int(info["num_classes"]), int(info["num_samples"]))
    for field in ("dataset.validation_file_id", "dataset.test_file_id"):
        if field in rows:
            other = rows[field].info
            if tuple(other["input_shape"]) != data.input_shape:
                raise SpecError(f"input shape {other['input_shape']} differs from the training set's "
                                f"{list(data.input_shape)}", field=field)
            if int(other["num_classes"]) > data.num_classes:
                raise SpecError(f"has labels up to {other['num_classes'] - 1} but the training set has "
                                f"{data.num_classes} classes", field=field)
    return data


def _check_teacher(spec: DistillSpec, row, data: DataInfo, store: ArtifactStore) -> None:
    info = row.info or {}
    if info.get("kind") == "state_dict":
        if info.get("num_classes") not in (None, data.num_classes):
            raise SpecError(f"the teacher's last layer has {info['num_classes']} outputs but the dataset has "
                            f"{data.num_classes} classes", field="teacher.file_id")
        # its header is read from a local copy (an S3 store's cached one; the directory store's file)
        path = str(store.local_path(row.storage_key))
        spec.teacher.arch_params = check_state_dict_teacher(path, spec.teacher.arch,
                                                            spec.teacher.arch_params, data)
        return
    if spec.teacher.arch is not None or spec.teacher.arch_params:
        raise SpecError(f"only a safetensors state-dict teacher takes an architecture; this teacher is "
                        f"{info.get('kind')}", field="teacher.arch")
    check_teacher_info(info, data)
    if info.get("kind") == "logits" and spec.hyperparameters.augmentations:
        raise SpecError("precomputed logits cannot follow augmented inputs; use augment none",
                        field="hyperparameters.augment")


def _pop(d: dict, dotted: str):
    head, _, tail = dotted.partition(".")
    return d.get(head, {}).pop(tail, None) if tail else d.pop(head, None)


def _put(d: dict, dotted: str, value) -> None:
    head, _, tail = dotted.partition(".")
    d.setdefault(head, {})[tail] = value
