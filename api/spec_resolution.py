"""From a `JobCreate` body to a resolved spec that can run, or a 422 naming the field.

Defaults and ranges come from kdcore.spec (one source of truth); shapes, classes and teacher
weights are checked against the uploaded files' stored descriptions and headers. The stored spec
keeps file ids (the worker turns them into paths) and says the device: `hyperparameters.device: auto`
is decided here, once, as the device of the queue the job is routed to (`resources.device`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy.orm import Session

from api.schemas.jobs import JobCreate
from jobs import files_repo, spec_files
from jobs.artifact_store import ArtifactStore
from jobs.errors import NotFound
from jobs.spec_files import FileField
from kdcore.augment import check_input_shape as check_augment_shape
from kdcore.data import MAX_DATASET_BYTES, MAX_SAMPLES
from kdcore.errors import KDError, SpecError
from kdcore import spec_checks
from kdcore.spec import DistillSpec
from kdcore.spec_checks import (DataInfo, builtin_info, check_state_dict_teacher, check_student_accepted,
                                check_student_init, check_teacher_info)


def resolve_spec(session: Session, *, tenant_id: str, body: JobCreate, store: ArtifactStore) -> dict[str, Any]:
    """The resolved spec (every default filled in, file ids kept) or a SpecError naming the field.

    The file fields are mapped by jobs.spec_files (one table for the API and the worker); while
    the spec is checked, kdcore's file references are the file ids themselves (nothing here reads
    a file but the safetensors headers of a state-dict teacher and of initial student weights,
    through their rows)."""
    rows: dict[str, Any] = {}  # where ("teacher.file_id", "dataset.unlabeled_file_ids[0]") -> file row

    def own(field: FileField, where: str, file_id: str) -> str:
        rows[where] = _own_file(session, tenant_id, file_id, where, field.purposes)
        return file_id

    raw = spec_files.to_kdcore(body.model_dump(exclude_none=True), own)
    try:
        spec = DistillSpec.from_dict(raw)
        data, labeled = _training_data(spec, rows)
        spec.resolve_labels(labeled)
        data = _check_labelled_files(data, rows)
        spec.student.arch_params = check_student_accepted(spec.student.arch, spec.student.arch_params, data,
                                                          spec.hyperparameters.batch_size)
        check_augment_shape(spec.hyperparameters.augmentations, data.input_shape)
        _check_teacher(spec, rows["teacher.file_id"], data, store)
        if "student.init_file_id" in rows:
            with _stored(rows["student.init_file_id"], "student.init_file_id"):
                path = str(store.local_path(rows["student.init_file_id"].storage_key))
                check_student_init(path, spec.student.arch, spec.student.arch_params, data)
    except KDError as e:  # kdcore's field names -> the service's (every one, when several failed)
        found = [(spec_files.service_field(f), m) for f, m in getattr(e, "errors", None) or []]
        raise SpecError(e.message, field=spec_files.service_field(e.field), errors=found or None) from None
    hp = spec.hyperparameters
    if hp.device == "auto":  # decided here, once: the job's queue (resources.device) says where it runs
        hp.device = spec.resources.device
    return spec_files.to_service(spec.to_dict())


def check_files_still_exist(spec: dict[str, Any], existing: set[str]) -> None:
    """A SpecError naming the field when a file the resolved `spec` names was deleted since
    `resolve_spec` read it. `existing` is what `quotas.take_job_slot` found of the spec's files
    (spec_files.named_files) once it had locked the tenant, in the transaction that inserts the job:
    `DELETE /v1/files/{id}` takes the same lock before it looks for unfinished jobs naming the file,
    so either this sees the file gone (a 422, nothing stored) or the delete sees the job once it is
    committed (a 409, the file kept)."""
    for where, file_id in spec_files.named_files(spec):
        if file_id not in existing:
            raise SpecError(f"no file {file_id!r}: it was deleted while this job was being submitted", field=where)


@contextmanager
def _stored(row, where: str) -> Iterator[None]:
    """Around a read of a stored file's bytes: an object deleted meanwhile (its row was read before a
    concurrent `DELETE /v1/files/{id}` committed) is a 422 naming the field, not a 500."""
    try:
        yield
    except FileNotFoundError:
        raise SpecError(f"no file {row.id!r}: it was deleted while this job was being submitted",
                        field=where) from None


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


def _training_data(spec: DistillSpec, rows: dict) -> tuple[DataInfo, int]:
    """The training data's shape, classes and rows (the unlabelled files' rows included), checked
    against the limits, and how many of those rows are labelled. Classes are the training source's:
    0 when none of its rows is labelled."""
    if spec.dataset.builtin is not None:
        data = builtin_info(spec.dataset.builtin)
        labeled, size = data.num_samples, 0
    else:
        row = rows["dataset.train_file_id"]
        data = DataInfo(tuple(row.info["input_shape"]), int(row.info["num_classes"]), int(row.info["num_samples"]))
        labeled, size = _num_labeled(row.info), row.bytes
    if spec.dataset.labels_per_class is not None:
        labeled = min(labeled, spec.dataset.labels_per_class * max(data.num_classes, 1))
    total = data.num_samples
    for where, row in _unlabeled_files(rows):
        if tuple(row.info["input_shape"]) != data.input_shape:
            raise SpecError(f"input shape {row.info['input_shape']} differs from the training set's "
                            f"{list(data.input_shape)}", field=where)
        labeled += _num_labeled(row.info)
        total += int(row.info["num_samples"])
        size += row.bytes
    if total > MAX_SAMPLES:
        raise SpecError(f"the training data has {total:,} rows with the unlabelled files, over the limit of "
                        f"{MAX_SAMPLES:,} (MAX_SAMPLES)", field="dataset.unlabeled_file_ids")
    if size > MAX_DATASET_BYTES:
        raise SpecError(f"the training files hold {size:,} bytes with the unlabelled files, over the limit of "
                        f"{MAX_DATASET_BYTES:,} (MAX_DATASET_BYTES)", field="dataset.unlabeled_file_ids")
    return DataInfo(data.input_shape, data.num_classes, total), labeled


def _check_labelled_files(data: DataInfo, rows: dict) -> DataInfo:
    """The job's classes, and every other file's labels checked against them (and the validation and
    test files' shapes). Classes are the training source's; when none of its rows is labelled, the
    teacher's (its stored description); when that says nothing either, 0: the worker decides."""
    classes, whose = data.num_classes, "the training set has"
    if classes == 0:
        classes, whose = int((rows["teacher.file_id"].info or {}).get("num_classes") or 0), "the teacher predicts"
    others = [*_unlabeled_files(rows),
              *((f, rows[f]) for f in ("dataset.validation_file_id", "dataset.test_file_id") if f in rows)]
    for where, row in others:
        if tuple(row.info["input_shape"]) != data.input_shape:
            raise SpecError(f"input shape {row.info['input_shape']} differs from the training set's "
                            f"{list(data.input_shape)}", field=where)
        if classes and int(row.info["num_classes"]) > classes:
            raise SpecError(f"has labels up to {row.info['num_classes'] - 1} but {whose} {classes} classes",
                            field=where)
    return DataInfo(data.input_shape, classes, data.num_samples)


def _unlabeled_files(rows: dict) -> list[tuple[str, Any]]:
    """(where, row) of dataset.unlabeled_file_ids, in the order given."""
    items = [k for k in rows if k.startswith("dataset.unlabeled_file_ids[")]
    return [(k, rows[k]) for k in sorted(items, key=lambda k: int(k[k.index("[") + 1:-1]))]


def _num_labeled(info: dict) -> int:
    # a file described before unlabelled rows existed had every row labelled
    return int(info.get("num_labeled", info["num_samples"]))


def _check_teacher(spec: DistillSpec, row, data: DataInfo, store: ArtifactStore) -> None:
    info = row.info or {}
    if info.get("kind") == "logits" and spec.dataset.unlabeled_paths:
        raise SpecError("precomputed teacher logits cover the training file's rows only and cannot label "
                        "extra inputs: upload the teacher itself (safetensors or ONNX)",
                        field="dataset.unlabeled_file_ids")
    if info.get("kind") == "state_dict":
        if info.get("num_classes") not in (None, data.num_classes):
            raise SpecError(f"the teacher's last layer has {info['num_classes']} outputs but the dataset has "
                            f"{data.num_classes} classes", field="teacher.file_id")
        # its header is read from a local copy (an S3 store's cached one; the directory store's file)
        with _stored(row, "teacher.file_id"):
            arch, arch_params = spec.teacher.arch, spec.teacher.arch_params
            # a stored object never changes (its key is written once): the check of its header against an
            # architecture is kept like the student's (it builds the teacher on the meta device)
            key = ("teacher", row.storage_key, row.sha256, arch, json.dumps(arch_params, sort_keys=True), data)
            spec.teacher.arch_params = spec_checks.remembered(key, lambda: check_state_dict_teacher(
                str(store.local_path(row.storage_key)), arch, arch_params, data))
        return
    if spec.teacher.arch is not None or spec.teacher.arch_params:
        raise SpecError(f"only a safetensors state-dict teacher takes an architecture; this teacher is "
                        f"{info.get('kind')}", field="teacher.arch")
    check_teacher_info(info, data)
    if info.get("kind") == "logits" and spec.hyperparameters.augmentations:
        raise SpecError("precomputed logits cannot follow augmented inputs; use augment none",
                        field="hyperparameters.augment")
