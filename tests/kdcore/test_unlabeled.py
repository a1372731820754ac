"""Unlabelled inputs (issue 12): files without labels, label -1, labels_per_class, the objective on
a batch that mixes labelled and unlabelled rows, augmented views, and the baseline's budget."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from kdcore.augment import Mix, augment, random_crop_flip, random_shift, targets
from kdcore.data import UNLABELED, inspect_dataset_file, keep_labels_per_class, load_builtin, read_dataset_file
from kdcore.errors import DataError, SpecError
from kdcore.losses import kd_loss
from kdcore.pipeline import load_splits, planned_steps, run_distillation
from kdcore.spec import DistillSpec
from tests.kdcore.factories import STUDENT, TEACHER_PARAMS, save_state_dict, train_digits_teacher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    import warnings

    model = train_digits_teacher()
    d = tmp_path_factory.mktemp("teachers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 64), str(d / "teacher.onnx"), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return {"state_dict": save_state_dict(model, d / "teacher.safetensors"), "onnx": d / "teacher.onnx"}


# ---- files ----

def test_npz_with_x_only_is_every_row_unlabelled(tmp_path):
    path = tmp_path / "u.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32))
    ds = read_dataset_file(path)
    assert ds.y.tolist() == [UNLABELED] * 7 and ds.num_labeled == 0 and ds.num_classes == 0
    report = inspect_dataset_file(path).to_dict()
    assert report["num_samples"] == 7 and report["num_labeled"] == 0 and report["label_histogram"] == []


def test_label_minus_one_marks_an_unlabelled_row(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, x=np.zeros((5, 2), np.float32), y=np.array([0, -1, 2, -1, 1]))
    report = inspect_dataset_file(path).to_dict()
    assert report["num_labeled"] == 3 and report["num_classes"] == 3 and report["label_histogram"] == [1, 1, 1]


def test_tables_without_a_label_column(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [0, 1, 2]}), tmp_path / "u.parquet")
    pcsv.write_csv(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), tmp_path / "u.csv")
    for name, n in (("u.parquet", 3), ("u.csv", 2)):
        ds = read_dataset_file(tmp_path / name)
        assert ds.input_shape == (2,) and ds.num_labeled == 0 and ds.num_samples == n


def test_unlabelled_files_still_get_every_check(tmp_path):
    bad = np.zeros((4, 2), np.float32)
    bad[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(DataError, match="non-finite"):
        read_dataset_file(tmp_path / "nan.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object).reshape(4, 1))
    with pytest.raises(DataError, match="object arrays are refused"):
        read_dataset_file(tmp_path / "obj.npz")
    np.savez(tmp_path / "many.npz", x=np.zeros((12, 2), np.float32))
    with pytest.raises(DataError, match="12 samples is over the limit of 10"):
        read_dataset_file(tmp_path / "many.npz", max_samples=10)


def test_keep_labels_per_class_is_seeded_and_stratified():
    train = load_builtin("digits")["train"]
    kept = keep_labels_per_class(train, 10, seed=3)
    assert torch.bincount(kept.y[kept.labeled], minlength=10).tolist() == [10] * 10
    assert torch.equal(kept.y, keep_labels_per_class(train, 10, seed=3).y)
    assert not torch.equal(kept.y, keep_labels_per_class(train, 10, seed=4).y)
    assert bool((kept.y[kept.labeled] == train.y[kept.labeled]).all())  # kept labels are the true ones
    assert torch.equal(kept.x, train.x)


# ---- the objective ----

def _independent_loss(s, t, y, T, alpha):
    """The documented formula, computed row by row in float64 with no library loss."""
    s, t = s.double(), t.double()
    p = torch.softmax(t / T, 1)
    log_q = torch.log_softmax(s / T, 1)
    kl = [(p[i] * (torch.log(p[i]) - log_q[i])).sum().item() for i in range(len(s))]
    ce = [-torch.log_softmax(s[i], 0)[y[i]].item() for i in range(len(s)) if y[i] >= 0]
    hard = sum(ce) / len(ce) if ce else 0.0
    return alpha * hard + (1 - alpha) * T * T * sum(kl) / len(kl), hard


@pytest.mark.parametrize("labels", [[0, 2, -1, 1, -1, -1], [-1] * 6, [1, 0, 2, 2, 1, 0]],
                         ids=["mixed", "no-labelled-row", "all-labelled"])
def test_mixed_batch_objective_matches_an_independent_computation(labels):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 3, generator=g) * 2, torch.randn(6, 3, generator=g) * 2
    y = torch.tensor(labels)
    terms = kd_loss(s, t, y, temperature=3.0, alpha=0.4)
    total, hard = _independent_loss(s, t, y, 3.0, 0.4)
    assert terms.total.item() == pytest.approx(total, rel=1e-5)
    assert terms.hard.item() == pytest.approx(hard, rel=1e-5, abs=1e-7)
    assert math.isfinite(terms.total.item())


def test_unlabelled_rows_give_no_hard_gradient():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3)
    kd_loss(s, t, torch.tensor([0, -1, -1, 2]), temperature=2.0, alpha=1.0).total.backward()
    assert s.grad[1].abs().sum() == 0 and s.grad[2].abs().sum() == 0 and s.grad[0].abs().sum() > 0


def test_mixup_targets_mix_labels_and_drop_rows_mixed_with_an_unlabelled_one():
    y = torch.tensor([0, 1, -1, 2])
    mix = Mix(0.7, torch.tensor([1, 0, 3, 2]))
    w = targets(y, mix, 3)
    assert torch.allclose(w[0], torch.tensor([0.7, 0.3, 0.0]))
    assert torch.allclose(w[1], torch.tensor([0.3, 0.7, 0.0]))
    assert w[2].sum() == 0 and w[3].sum() == 0  # row 3 was mixed with the unlabelled row 2
    s = torch.randn(4, 3)
    ce = kd_loss(s, s, w, temperature=1.0, alpha=1.0).hard
    log_q = torch.log_softmax(s, 1)
    expected = -((w[0] * log_q[0]).sum() + (w[1] * log_q[1]).sum()) / 2
    assert ce.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- augmentations ----

def test_shift_is_a_circular_roll_within_shift_max():
    torch.manual_seed(0)
    x = torch.arange(20.0).repeat(50, 1)
    out = random_shift(x, 3)
    for row in out:
        k = int(row[0].item())  # a roll by s puts element (−s mod 20) first
        shift = (-k) % 20
        assert shift <= 3 or shift >= 17
        assert torch.equal(row, torch.roll(x[0], shift))
    assert len({int(r[0]) for r in out}) > 1  # rows get their own shifts


def test_crop_flip_keeps_the_shape_and_only_moves_pixels():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    out = random_crop_flip(x, 2)
    assert out.shape == x.shape
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values  # pixels of the image or padding


def test_augment_with_nothing_is_the_identity():
    x = torch.randn(4, 5)
    out, mix = augment(x, (), noise_std=0.1, shift_max=2, mixup_alpha=0.4)
    assert out is x and mix is None


# ---- the pipeline ----

def _spec(teacher_path, dataset, **hp):
    return DistillSpec.from_dict({
        "teacher": {"path": str(teacher_path), "arch": "mlp", "arch_params": TEACHER_PARAMS},
        "student": STUDENT, "dataset": dataset,
        "hyperparameters": {"epochs": 2, "learning_rate": 0.01, "device": "cpu", "batch_size": 64, **hp}})


def test_labels_per_class_keeps_validation_labels_and_counts_rows(files):
    spec = _spec(files["state_dict"], {"builtin": "digits", "labels_per_class": 5})
    splits = load_splits(spec)
    assert splits.train.num_labeled == 50
    assert splits.val.num_labeled == splits.val.num_samples  # validation keeps its labels


def test_baseline_trains_on_labelled_rows_for_the_distilled_runs_steps(files, tmp_path):
    spec = _spec(files["state_dict"], {"builtin": "digits", "labels_per_class": 5})
    summary = run_distillation(spec, out_dir=tmp_path, export_onnx_file=False).to_dict()
    n = load_splits(spec).train.num_samples
    steps = planned_steps(n, spec.hyperparameters)
    assert summary["student"]["steps"] == steps == summary["baseline"]["steps"]
    assert summary["student"]["train_rows"] == {"labeled": 50, "unlabeled": n - 50}
    assert summary["baseline"]["train_rows"] == {"labeled": 50, "unlabeled": 0}
    # 50 rows are one batch of 64: the baseline needs `steps` epochs to take the same steps
    assert summary["baseline"]["epochs_run"] == steps


def test_unlabelled_files_join_the_training_inputs(files, tmp_path):
    digits = load_builtin("digits")
    np.savez(tmp_path / "labelled.npz", x=digits["train"].x[:100].numpy(), y=digits["train"].y[:100].numpy())
    np.savez(tmp_path / "extra.npz", x=digits["train"].x[100:].numpy())  # x only
    spec = _spec(files["state_dict"], {"train_path": str(tmp_path / "labelled.npz"),
                                       "unlabeled_paths": [str(tmp_path / "extra.npz")],
                                       "test_path": str(tmp_path / "labelled.npz")})
    splits = load_splits(spec)
    assert splits.train.num_samples == 90 + len(digits["train"].y) - 100 and splits.train.num_labeled == 90
    summary = run_distillation(spec, out_dir=tmp_path / "out", export_onnx_file=False).to_dict()
    assert summary["student"]["train_rows"]["unlabeled"] == len(digits["train"].y) - 100


def test_unlabelled_file_with_other_shape_names_the_field(files, tmp_path):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((10, 8), np.float32))
    spec = _spec(files["state_dict"], {"builtin": "digits", "unlabeled_paths": [str(tmp_path / "wrong.npz")]})
    with pytest.raises(DataError) as info:
        load_splits(spec)
    assert info.value.field == "dataset.unlabeled_paths[0]" and "differs" in info.value.message


def test_no_labels_at_all_distils_with_alpha_zero_and_agreement(files, tmp_path):
    digits = load_builtin("digits")
    np.savez(tmp_path / "inputs.npz", x=digits["train"].x.numpy())
    raw = {"teacher": {"path": str(files["onnx"])}, "student": STUDENT,
           "dataset": {"train_path": str(tmp_path / "inputs.npz")},
           "hyperparameters": {"epochs": 2, "learning_rate": 0.01, "device": "cpu"}}
    summary = run_distillation(DistillSpec.from_dict(raw), out_dir=tmp_path / "a", export_onnx_file=False).to_dict()
    assert summary["alpha"] == 0.0 and summary["baseline"] is None
    assert summary["evaluated_on"] == "validation" and summary["student"]["accuracy"] is None
    assert summary["student"]["agreement"] > 0.5  # it learned the teacher's function from inputs alone
    # a labelled test file gives test accuracy
    np.savez(tmp_path / "test.npz", x=digits["test"].x.numpy(), y=digits["test"].y.numpy())
    raw["dataset"]["test_path"] = str(tmp_path / "test.npz")
    summary = run_distillation(DistillSpec.from_dict(raw), out_dir=tmp_path / "b", export_onnx_file=False).to_dict()
    assert summary["evaluated_on"] == "test" and summary["student"]["accuracy"] > 0.3
    # an explicit alpha > 0 or baseline true is refused, naming the field
    for extra, field in (({"hyperparameters": {**raw["hyperparameters"], "alpha": 0.5}}, "hyperparameters.alpha"),
                         ({"baseline": True}, "baseline")):
        with pytest.raises(SpecError) as info:
            run_distillation(DistillSpec.from_dict({**raw, **extra}), out_dir=tmp_path / "c", export_onnx_file=False)
        assert info.value.field == field


def test_augmented_distillation_runs_the_teacher_on_the_view(files, tmp_path):
    spec = _spec(files["state_dict"], {"builtin": "digits", "labels_per_class": 5}, augment=["shift", "mixup"])
    summary = run_distillation(spec, out_dir=tmp_path, export_onnx_file=False).to_dict()
    assert summary["student"]["accuracy"] is not None and summary["baseline"]["steps"] == summary["student"]["steps"]


def test_augment_that_does_not_fit_the_inputs_names_the_field(files, tmp_path):
    spec = _spec(files["state_dict"], {"builtin": "digits"}, augment=["crop_flip"])
    with pytest.raises(SpecError) as info:
        run_distillation(spec, out_dir=tmp_path, export_onnx_file=False)
    assert info.value.field == "hyperparameters.augment"


def test_an_onnx_teacher_labels_100k_unlabelled_rows_in_bounded_chunks(files):
    """The cache asks the ONNX session for at most one chunk of rows at a time, so the graph's
    intermediate activations exist for one chunk only, and the result covers every row."""
    from kdcore.teacher_logit_cache import compute_teacher_logits
    from kdcore.teachers import load_teacher

    teacher = load_teacher(files["onnx"], input_shape=(64,), num_classes=10)
    asked: list[int] = []
    inner = teacher.logits

    def spy(x, indices=None):
        asked.append(len(x))
        return inner(x, indices)

    teacher.logits = spy
    x = torch.rand(100_000, 64) * 16
    progress: list[tuple[int, int]] = []
    logits = compute_teacher_logits(teacher, x, on_progress=lambda done, total: progress.append((done, total)))
    assert logits.shape == (100_000, 10) and max(asked) <= 1024 and sum(asked) == 100_000
    assert progress[-1] == (100_000, 100_000) and len(progress) == len(asked)
    rows = torch.tensor([0, 51_234, 99_999])
    assert torch.allclose(logits[rows], inner(x[rows]), atol=1e-5)


@pytest.mark.parametrize("dataset", [{"builtin": "digits", "standardize": True},
                                     {"builtin": "digits", "standardize": False, "labels_per_class": 10}],
                         ids=["standardized", "raw"])
def test_the_onnx_student_takes_raw_inputs_and_scores_the_reported_accuracy(files, tmp_path, dataset):
    """The exported graph carries the input standardisation (issue 15's silent wrong result):
    scored with onnxruntime on the raw test inputs it reproduces the job's reported accuracy."""
    import onnx
    import onnxruntime as ort

    spec = _spec(files["state_dict"], dataset)
    summary = run_distillation(spec, out_dir=tmp_path).to_dict()
    test = load_builtin("digits")["test"]
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": test.x.numpy()})
    onnx_accuracy = float((logits.argmax(1) == test.y.numpy()).mean())
    assert summary["evaluated_on"] == "test"
    assert onnx_accuracy == pytest.approx(summary["student"]["accuracy"], abs=1e-9)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "student.onnx")).metadata_props}
    assert props["input_shape"] == "[64]" and props["num_classes"] == "10"
    assert ("standardises" in props["input"]) == dataset["standardize"]


# ---- student size (issue 16 item 5) ----

def test_a_student_over_the_parameter_limit_is_refused_without_allocating():
    from kdcore.spec_checks import MAX_STUDENT_PARAMETERS, DataInfo, check_student

    with pytest.raises(SpecError) as info:
        check_student("mlp", {"hidden_sizes": [65_536] * 16}, DataInfo((64,), 10, 100))
    assert info.value.field == "student.arch_params"
    assert f"{MAX_STUDENT_PARAMETERS:,}" in info.value.message and "64,430,407,690 parameters" in info.value.message


def test_activation_memory_per_batch_is_bounded():
    from kdcore.spec_checks import DataInfo, activation_bytes, check_student
    from kdcore.models import build_model

    model = build_model("mlp", {"hidden_sizes": [32]}, input_shape=(64,), num_classes=10)
    # Linear 64->32, ReLU, Linear 32->10 outputs for a batch of 8 (dropout 0 may add an identity)
    assert activation_bytes(model, (64,), 8) >= (32 + 32 + 10) * 8 * 4
    check_student("resnet32x4", {}, DataInfo((3, 32, 32), 10, 100), batch_size=128)
    with pytest.raises(SpecError) as info:
        check_student("resnet32x4", {}, DataInfo((3, 32, 32), 10, 100), batch_size=65_536)
    assert info.value.field == "student.arch_params" and "GiB" in info.value.message


def test_the_runs_student_check_is_remembered_for_accepted_students_only(monkeypatch):
    """check_student_accepted (the pipeline's check of a spec the service already accepted) builds a
    student it accepted once; a refusal, other parameters or a lowered limit are checked anew."""
    from kdcore import spec_checks
    from kdcore.spec_checks import DataInfo, check_student_accepted

    monkeypatch.setattr(spec_checks, "_accepted", {})
    builds = []
    real = spec_checks.build_model
    monkeypatch.setattr(spec_checks, "build_model", lambda *a, **k: builds.append(a[0]) or real(*a, **k))
    data = DataInfo((64,), 10, 0)
    first = check_student_accepted("mlp", {"hidden_sizes": [8]}, data, batch_size=64)
    first["hidden_sizes"].append(99)  # the caller's copy
    assert check_student_accepted("mlp", {"hidden_sizes": [8]}, data, batch_size=64) == {**first, "hidden_sizes": [8]}
    assert len(builds) == 1
    check_student_accepted("mlp", {"hidden_sizes": [9]}, data, batch_size=64)
    assert len(builds) == 2
    monkeypatch.setattr(spec_checks, "MAX_STUDENT_PARAMETERS", 10)
    for _ in range(2):
        with pytest.raises(SpecError, match="parameters"):
            check_student_accepted("mlp", {"hidden_sizes": [8]}, data, batch_size=64)
    assert len(builds) == 4
