"""One distillation start to finish (kdcore.pipeline.run_distillation) on the builtin digits data,
with each kind of teacher file, standardisation and uploaded dataset files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import kdcore
from kdcore.data import Standardizer, load_builtin, split_indices
from kdcore.errors import DataError, TeacherError
from kdcore.evaluation import accuracy, predict_logits
from kdcore.export import read_student_metadata
from kdcore.models import build_model, count_params, estimate_macs
from kdcore.pipeline import PHASES, load_splits, run_distillation
from kdcore.results import DistillResult, ModelReport, StudentReport
from tests.kdcore.factories import (PhaseRecorder, StopAfterFirstCheckpoint, distill_spec, save_state_dict,
                                    stop_then_resume, train_digits_teacher)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::torch.jit.TracerWarning")

def _accuracy(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(predict_logits(module, x), y)


# ---- a state-dict teacher: the whole summary and the artifacts ----

@pytest.fixture(scope="module")
def state_dict_run(tmp_path_factory, files):
    out = tmp_path_factory.mktemp("out")
    cb = PhaseRecorder()
    summary = run_distillation(distill_spec(files["state_dict"]), out_dir=out, callbacks=cb)
    return summary, out, cb


def test_summary_reports_teacher_student_baseline_and_their_relations(state_dict_run, teacher_model):
    result, _, _ = state_dict_run
    assert isinstance(result, DistillResult)
    test = load_builtin("digits")["test"]
    t, s, b = result.teacher, result.student, result.baseline
    assert result.evaluated_on == "test" and result.num_eval_samples == test.num_samples
    assert t.accuracy == _accuracy(teacher_model, test.x, test.y) and t.accuracy > 0.8
    # the teacher on the validation rows too: the split the training curves are on
    train = load_builtin("digits")["train"]
    _, val_rows = split_indices(train.y, fraction=0.1, seed=0)
    assert t.val_accuracy == pytest.approx(_accuracy(teacher_model, train.x[val_rows], train.y[val_rows]))
    assert 0 < s.accuracy <= 1 and 0 < b.accuracy <= 1
    assert 0 <= s.agreement <= 1 and result.agreement == s.agreement
    assert t.parameters == count_params(teacher_model) == 64 * 64 + 64 + 64 * 10 + 10
    assert s.parameters == 64 * 16 + 16 + 16 * 10 + 10
    assert t.macs == estimate_macs(teacher_model, (64,)) and s.macs > 0
    assert result.compression == t.parameters / s.parameters
    assert result.speedup == pytest.approx(t.latency_ms / s.latency_ms) and t.latency_ms > 0 and s.latency_ms > 0
    assert result.distillation_gain == s.accuracy - b.accuracy
    assert (s.epochs_run, b.epochs_run) == (2, 2) and s.steps == b.steps > 0
    assert s.train_rows.labeled == b.train_rows.labeled > 0 and s.train_rows.unlabeled == 0
    assert (result.temperature, result.alpha, result.loss) == (4.0, 0.3, "forward_kl")
    assert result.standardized is False and result.onnx == "student.onnx"
    assert result.comparison.rows == result.num_eval_samples and result.sweep is None


def test_the_result_serialises_to_the_documented_json(state_dict_run):
    """`to_dict` is the job's `result`: every class's fields, nested, plus the top-level agreement."""
    result, _, _ = state_dict_run
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {f.name for f in dataclasses.fields(DistillResult)} | {"agreement"}
    assert set(d["student"]) == {f.name for f in dataclasses.fields(StudentReport)}
    assert set(d["teacher"]) == {"accuracy", "ece", "val_accuracy", "parameters", "macs", "latency_ms"}
    assert set(d["baseline"]) == {f.name for f in dataclasses.fields(ModelReport)}
    assert d["student"]["train_rows"] == {"labeled": result.student.train_rows.labeled, "unlabeled": 0}
    assert d["comparison"]["verdict"] == result.comparison.verdict and d["agreement"] == result.student.agreement


def test_artifacts_are_written_and_the_student_file_reproduces_the_accuracy(state_dict_run):
    result, out, _ = state_dict_run
    summary = result.to_dict()
    assert {p.name for p in out.iterdir()} >= {"student.safetensors", "student.onnx", "metrics.jsonl",
                                               "summary.json"}
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["epoch"]) for r in rows] == [("student", 1), ("student", 2),
                                                      ("baseline", 1), ("baseline", 2)]
    assert rows[0]["val_agreement"] is not None and rows[0]["train_soft"] > 0
    assert rows[2]["train_soft"] == 0

    student = kdcore.load_student(out / "student.safetensors")
    test = load_builtin("digits")["test"]
    assert _accuracy(student, test.x, test.y) == summary["student"]["accuracy"]
    meta = read_student_metadata(out / "student.safetensors")
    assert meta["arch"] == "mlp" and meta["arch_params"]["hidden_sizes"] == [16]
    assert meta["metrics"]["accuracy"] == summary["student"]["accuracy"]
    assert "sha256" not in meta["metrics"]  # the file cannot hold its own hash
    assert meta["spec"]["hyperparameters"]["epochs"] == 2 and "standardizer" not in meta
    assert summary["student"]["size_bytes"] == (out / "student.safetensors").stat().st_size


def test_phases_are_reported_in_the_documented_order(state_dict_run, files, tmp_path):
    _, _, cb = state_dict_run
    assert cb.phases == [p for p in PHASES if p != "repeats"]  # one seed: no repeats phase
    assert PHASES == ("loading", "caching_teacher", "training", "baseline", "repeats", "evaluating", "exporting")
    assert [e for e, _ in cb.events] == ["data_loaded", "teacher_cached"]
    assert cb.events[0][1]["train"] + cb.events[0][1]["validation"] == 1438

    cb2 = PhaseRecorder()
    run_distillation(distill_spec(files["state_dict"], baseline=False, epochs=1), out_dir=tmp_path, callbacks=cb2,
                     export_onnx_file=False)
    assert cb2.phases == [p for p in PHASES if p not in ("baseline", "repeats")]
    assert not (tmp_path / "student.onnx").exists()


def test_an_interrupted_run_resumes_from_its_checkpoints_and_reports_every_epoch(files, tmp_path):
    cb, _ = stop_then_resume(distill_spec(files["state_dict"], baseline=False), tmp_path, StopAfterFirstCheckpoint())
    assert [m.epoch for m in cb.epochs] == [2]  # only epoch 2 was trained again
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["epoch"]) for r in rows] == [("student", 1), ("student", 2)]


# ---- other teacher files ----

def test_an_onnx_teacher(files, teacher_model, tmp_path):
    summary = run_distillation(distill_spec(files["onnx"], teacher_arch=False, epochs=1), out_dir=tmp_path,
                               export_onnx_file=False).to_dict()
    test = load_builtin("digits")["test"]
    t, s = summary["teacher"], summary["student"]
    assert t["accuracy"] == pytest.approx(_accuracy(teacher_model, test.x, test.y), abs=0.01)
    assert t["parameters"] == count_params(teacher_model)  # initializers of the graph
    assert summary["compression"] == t["parameters"] / s["parameters"]
    assert summary["speedup"] > 0 and 0 <= s["agreement"] <= 1
    assert summary["distillation_gain"] == s["accuracy"] - summary["baseline"]["accuracy"]
    student = kdcore.load_student(tmp_path / "student.safetensors")
    assert _accuracy(student, test.x, test.y) == s["accuracy"]


def test_a_precomputed_logits_teacher(files, tmp_path):
    cb = PhaseRecorder()
    summary = run_distillation(distill_spec(files["logits"], teacher_arch=False, epochs=1), out_dir=tmp_path,
                               callbacks=cb, export_onnx_file=False).to_dict()
    # The logits cover the training source only: validation (carved from it) has agreement, test has not.
    assert all(m.val_agreement is not None for m in cb.epochs if m.run == "student")
    assert summary["teacher"]["accuracy"] is None and summary["agreement"] is None
    assert summary["teacher"]["parameters"] is None and summary["compression"] is None
    assert summary["speedup"] is None
    test = load_builtin("digits")["test"]
    student = kdcore.load_student(tmp_path / "student.safetensors")
    assert _accuracy(student, test.x, test.y) == summary["student"]["accuracy"]
    assert summary["distillation_gain"] == summary["student"]["accuracy"] - summary["baseline"]["accuracy"]


def test_precomputed_logits_with_noise_augmentation_follow_the_training_rows(files, tmp_path):
    # Pure distillation (alpha 0): the student can only learn the digits from the right teacher rows.
    spec = distill_spec(files["logits"], teacher_arch=False, baseline=False, epochs=4, alpha=0.0,
                 augment="noise", noise_std=0.1)
    summary = run_distillation(spec, out_dir=tmp_path, export_onnx_file=False).to_dict()
    assert summary["student"]["accuracy"] > 0.6


def test_standardize_stores_the_standardizer_and_the_teacher_still_sees_raw_inputs(files, tmp_path, state_dict_run):
    spec = distill_spec(files["state_dict"], dataset={"builtin": "digits", "standardize": True}, baseline=False)
    summary = run_distillation(spec, out_dir=tmp_path, export_onnx_file=False).to_dict()
    assert summary["standardized"] is True
    meta = read_student_metadata(tmp_path / "student.safetensors")
    expected = load_splits(spec).standardizer
    train = load_builtin("digits")["train"]
    train_rows, _ = split_indices(train.y, fraction=0.1, seed=0)
    fitted = Standardizer.fit(train.x[train_rows])  # training split only, not validation or test
    assert torch.equal(expected.mean, fitted.mean) and torch.equal(expected.std, fitted.std)
    assert meta["standardizer"] == fitted.state_dict()

    # The teacher was trained on raw pixels: standardising is for the student only.
    assert summary["teacher"]["accuracy"] == pytest.approx(state_dict_run[0].teacher.accuracy, abs=0.006)

    # The loaded student takes raw inputs (its standardizer inside, as in the ONNX file) and
    # reproduces the reported accuracy; the bare network does with the stored standardizer.
    test = load_builtin("digits")["test"]
    student = kdcore.load_student(tmp_path / "student.safetensors")
    assert _accuracy(student, test.x, test.y) == summary["student"]["accuracy"]
    assert student.input_shape == (64,)
    bare = kdcore.load_student(tmp_path / "student.safetensors", raw_inputs=False)
    scaler = Standardizer.from_state_dict(meta["standardizer"])
    assert _accuracy(bare, scaler.apply(test.x), test.y) == summary["student"]["accuracy"]
    assert _accuracy(bare, test.x, test.y) < summary["student"]["accuracy"]


# ---- refusals ----

def test_a_teacher_with_the_wrong_number_of_classes_is_refused(tmp_path):
    path = save_state_dict(train_digits_teacher(num_classes=5), tmp_path / "five.safetensors")
    with pytest.raises(TeacherError):
        run_distillation(distill_spec(path), out_dir=tmp_path / "out")
    np.savez(tmp_path / "five.npz", logits=np.zeros((1438, 5), dtype=np.float32))
    with pytest.raises(TeacherError, match="5 classes"):
        run_distillation(distill_spec(tmp_path / "five.npz", teacher_arch=False), out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "student.safetensors").exists()


# ---- uploaded dataset files ----

def _write_npz(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def test_uploaded_train_and_validation_files(files, teacher_model, tmp_path):
    parts = load_builtin("digits")
    train, test = parts["train"], parts["test"]
    train_path = _write_npz(tmp_path / "train.npz", train.x[:1200], train.y[:1200])
    val_path = _write_npz(tmp_path / "val.npz", train.x[1200:], train.y[1200:])
    spec = distill_spec(files["state_dict"], baseline=False, epochs=1,
                 dataset={"train_path": str(train_path), "validation_path": str(val_path)})
    cb = PhaseRecorder()
    summary = run_distillation(spec, out_dir=tmp_path / "out", callbacks=cb, export_onnx_file=False).to_dict()
    loaded = dict(cb.events)["data_loaded"]
    assert (loaded["train"], loaded["validation"], loaded["test"]) == (1200, 238, None)
    assert summary["evaluated_on"] == "validation" and summary["num_eval_samples"] == 238
    val_x, val_y = train.x[1200:], train.y[1200:]
    assert summary["teacher"]["accuracy"] == _accuracy(teacher_model, val_x, val_y)
    student = kdcore.load_student(tmp_path / "out" / "student.safetensors")
    assert _accuracy(student, val_x, val_y) == summary["student"]["accuracy"]

    # A test file, when given, is what the final evaluation uses.
    test_path = _write_npz(tmp_path / "test.npz", test.x, test.y)
    spec = distill_spec(files["state_dict"], baseline=False, epochs=1,
                 dataset={"train_path": str(train_path), "test_path": str(test_path)})
    summary = run_distillation(spec, out_dir=tmp_path / "out2", export_onnx_file=False).to_dict()
    assert summary["evaluated_on"] == "test" and summary["num_eval_samples"] == test.num_samples


def test_a_validation_file_with_another_input_shape_names_the_field(files, tmp_path):
    train = load_builtin("digits")["train"]
    train_path = _write_npz(tmp_path / "train.npz", train.x, train.y)
    val_path = _write_npz(tmp_path / "val.npz", train.x[:50, :32], train.y[:50])
    spec = distill_spec(files["state_dict"], dataset={"train_path": str(train_path), "validation_path": str(val_path)})
    with pytest.raises(DataError, match=r"\[32\].*\[64\]") as info:
        run_distillation(spec, out_dir=tmp_path / "out")
    assert info.value.field == "dataset.validation_path"
    assert str(info.value).startswith("dataset.validation_path: ")


def test_initial_weights_are_checked_from_their_header_before_any_tensor_is_loaded(tmp_path, monkeypatch):
    """The check the service makes at submission (kdcore.spec_checks.check_student_init) and the one
    the pipeline makes before loading `student.init_path` are one function on header shapes."""
    import safetensors.torch

    from kdcore.errors import SpecError
    from kdcore.pipeline import _load_init_weights
    from kdcore.spec_checks import DataInfo, check_student_init

    def saved(name, hidden):
        torch.manual_seed(1)
        model = build_model("mlp", {"hidden_sizes": hidden}, input_shape=(4,), num_classes=3)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / name))
        return str(tmp_path / name), model

    wider, _ = saved("wider.safetensors", [9])
    fits, source = saved("fits.safetensors", [8])
    data = DataInfo((4,), 3, 10)
    with pytest.raises(SpecError, match="shape mismatches") as info:
        check_student_init(wider, "mlp", {"hidden_sizes": [8]}, data)
    assert info.value.field == "student.init_path"
    check_student_init(fits, "mlp", {"hidden_sizes": [8]}, data)

    loads = []
    real_load = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    student = build_model("mlp", {"hidden_sizes": [8]}, input_shape=(4,), num_classes=3)
    with pytest.raises(SpecError, match="shape mismatches") as info:
        _load_init_weights(student, wider)
    assert info.value.field == "student.init_path" and loads == []  # refused from the header alone
    _load_init_weights(student, fits)
    assert len(loads) == 1
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), source.state_dict().values()))
