"""The one table of the spec's file fields (jobs/spec_files.py), which the API and the worker share."""

from __future__ import annotations

from dataclasses import fields

from jobs import spec_files
from kdcore.spec import DatasetSpec, DistillSpec, StudentSpec, TeacherSpec


def test_every_kdcore_file_field_has_exactly_one_row():
    kd_file_fields = {f"{section}.{f.name}" for section, cls in (("teacher", TeacherSpec), ("student", StudentSpec),
                                                                  ("dataset", DatasetSpec))
                      for f in fields(cls) if f.name.endswith(("path", "paths"))}
    assert kd_file_fields == {f.kd for f in spec_files.FILE_FIELDS}
    assert len({f.api for f in spec_files.FILE_FIELDS}) == len(spec_files.FILE_FIELDS)


def test_to_kdcore_resolves_every_id_and_names_list_items():
    seen = []

    def resolve(field, where, file_id):
        seen.append((field.api, where, file_id))
        return f"/local/{file_id}"

    service = {"teacher": {"file_id": "file_t", "arch": "mlp"}, "student": {"init_file_id": None},
               "dataset": {"train_file_id": "file_a", "unlabeled_file_ids": ["file_u", "file_v"]}}
    kd = spec_files.to_kdcore(service, resolve)
    assert kd["teacher"] == {"path": "/local/file_t", "arch": "mlp"}
    assert kd["dataset"] == {"train_path": "/local/file_a", "unlabeled_paths": ["/local/file_u", "/local/file_v"]}
    assert kd["student"] == {}  # a null file is left to kdcore's default
    assert ("dataset.unlabeled_file_ids", "dataset.unlabeled_file_ids[1]", "file_v") in seen
    assert service["teacher"]["file_id"] == "file_t"  # the input is not modified


def test_to_service_echoes_kdcores_resolved_spec_with_the_services_names():
    spec = DistillSpec.from_dict({"teacher": {"path": "file_t"},
                                  "dataset": {"builtin": "digits", "unlabeled_paths": ["file_u"]}})
    echoed = spec_files.to_service(spec.to_dict())
    assert echoed["teacher"]["file_id"] == "file_t" and "path" not in echoed["teacher"]
    assert echoed["dataset"]["unlabeled_file_ids"] == ["file_u"] and "unlabeled_paths" not in echoed["dataset"]
    assert echoed["student"]["init_file_id"] is None


def test_service_field_names_kdcore_errors_the_services_way():
    assert spec_files.service_field("dataset.unlabeled_paths[3]") == "dataset.unlabeled_file_ids[3]"
    assert spec_files.service_field("teacher.path") == "teacher.file_id"
    assert spec_files.service_field("hyperparameters.alpha") == "hyperparameters.alpha"
    assert spec_files.service_field(None) is None
