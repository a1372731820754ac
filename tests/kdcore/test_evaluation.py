"""Metrics against hand-computed values, prediction in batches, latency and the size report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdcore.evaluation import (
    EvalReport,
    accuracy,
    agreement,
    evaluate,
    expected_calibration_error,
    mean_kl,
    measure_latency,
    predict_logits,
    size_report,
)
from kdcore.models import build_model, count_params, estimate_macs


def logits_with_confidence(confidence: float, predicted: int, num_classes: int = 2) -> list[float]:
    """Logits whose softmax puts `confidence` on `predicted` and spreads the rest evenly."""
    rest = (1 - confidence) / (num_classes - 1)
    return [math.log(confidence if c == predicted else rest) for c in range(num_classes)]


@pytest.fixture
def student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", {"hidden_sizes": [8]}, input_shape=(6,), num_classes=3)


@pytest.fixture
def teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("mlp", {"hidden_sizes": [64, 64]}, input_shape=(6,), num_classes=3)


def test_accuracy_and_agreement_by_hand() -> None:
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    assert accuracy(student, y) == 0.75  # predicts 0, 1, 2, 0
    assert accuracy(teacher, y) == 0.25  # predicts 0, 2, 2, 1
    assert agreement(student, teacher) == 0.5
    assert agreement(student, student) == 1.0


def test_metrics_refuse_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        agreement(torch.zeros(3, 2), torch.zeros(3, 4))


def test_mean_kl_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 10) * 5
    assert mean_kl(z, z.clone()) == 0.0
    assert mean_kl(z, z + 3.0) == pytest.approx(0.0, abs=1e-12)  # a shift does not change softmax
    assert mean_kl(z, torch.randn(16, 10)) > 0.0
    assert mean_kl(z, torch.randn(16, 10), temperature=4.0) > 0.0


def test_mean_kl_by_hand() -> None:
    # P = [0.8, 0.2], Q = [0.5, 0.5]: KL = 0.8 ln 1.6 + 0.2 ln 0.4; teacher first (forward KL).
    teacher = torch.tensor([[math.log(0.8), math.log(0.2)]])
    student = torch.tensor([[0.0, 0.0]])
    expected = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert mean_kl(teacher, student) == pytest.approx(expected, rel=1e-6)
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert mean_kl(student, teacher) == pytest.approx(reverse, rel=1e-6)  # not symmetric
    # Batch mean, not per class: a second identical row leaves the value unchanged.
    assert mean_kl(teacher.repeat(2, 1), student.repeat(2, 1)) == pytest.approx(expected, rel=1e-6)
    # At T = 2 the logits are halved: P = softmax(ln[0.8, 0.2] / 2) = [2/3, 1/3].
    expected_t2 = (2 / 3) * math.log(4 / 3) + (1 / 3) * math.log(2 / 3)
    assert mean_kl(teacher, student, temperature=2.0) == pytest.approx(expected_t2, rel=1e-6)


def test_ece_of_a_perfectly_calibrated_toy_is_zero() -> None:
    # Ten predictions at confidence 0.8, eight of them right.
    logits = torch.tensor([logits_with_confidence(0.8, 0)] * 10)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(logits, y) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_an_over_confident_toy_by_hand() -> None:
    # Bin of conf 0.9: 4 samples, 2 right → |0.5 − 0.9| = 0.4.
    # Bin of conf 0.6: 4 samples, 3 right → |0.75 − 0.6| = 0.15.
    # ECE = 4/8 · 0.4 + 4/8 · 0.15 = 0.275.
    logits = torch.tensor([logits_with_confidence(0.9, 1)] * 4 + [logits_with_confidence(0.6, 0)] * 4)
    y = torch.tensor([1, 1, 0, 0] + [0, 0, 0, 1])
    assert expected_calibration_error(logits, y, n_bins=15) == pytest.approx(0.275, abs=1e-6)
    # One bin for everything: |5/8 − (4·0.9 + 4·0.6)/8| = |0.625 − 0.75| = 0.125.
    assert expected_calibration_error(logits, y, n_bins=1) == pytest.approx(0.125, abs=1e-6)


def test_ece_of_three_classes_in_separate_bins() -> None:
    # 3 classes: conf 0.5 (right) and 0.95 (wrong) land in different bins of 10.
    logits = torch.tensor([logits_with_confidence(0.5, 2, 3), logits_with_confidence(0.95, 0, 3)])
    y = torch.tensor([2, 1])
    assert expected_calibration_error(logits, y, n_bins=10) == pytest.approx(0.5 * 0.5 + 0.5 * 0.95, abs=1e-6)


def test_predict_logits_batches_in_eval_mode_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden_sizes": [8], "dropout": 0.5}, input_shape=(6,), num_classes=3)
    model.train()
    x = torch.randn(10, 6)
    out = predict_logits(model, x, batch_size=3)
    assert model.training
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (10, 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-6)  # dropout was off
    assert not out.requires_grad


def test_predict_logits_takes_a_callable() -> None:
    calls = []

    def fn(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return batch[:, :2].double()

    x = torch.randn(5, 4)
    out = predict_logits(fn, x, batch_size=2)
    assert calls == [2, 2, 1]
    assert out.dtype == torch.float32 and torch.equal(out, x[:, :2])


def test_measure_latency_is_positive_for_module_and_callable(student: torch.nn.Module) -> None:
    student.train()
    assert measure_latency(student, (6,), batch_size=8, repeats=3, warmup=1) > 0
    assert student.training
    seen = []
    latency = measure_latency(lambda b: seen.append(b.shape) or b.sum(1), (2, 3),
                              batch_size=4, repeats=5, warmup=2)
    assert latency > 0 and len(seen) == 7 and seen[0] == (4, 2, 3)


def test_evaluate_reports_plain_floats(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    torch.manual_seed(3)
    x = torch.randn(50, 6)
    y = torch.randint(0, 3, (50,))
    teacher_logits = predict_logits(teacher, x)
    report = evaluate(student=student, teacher_logits=teacher_logits, x=x, y=y)

    student_logits = predict_logits(student, x)
    assert isinstance(report, EvalReport)
    assert report.num_samples == 50
    assert report.student_accuracy == accuracy(student_logits, y)
    assert report.teacher_accuracy == accuracy(teacher_logits, y)
    assert report.agreement == agreement(student_logits, teacher_logits)
    assert report.mean_kl == mean_kl(teacher_logits, student_logits) > 0
    assert report.student_ece == expected_calibration_error(student_logits, y)
    assert report.teacher_ece == expected_calibration_error(teacher_logits, y)
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert all(type(v) is float for k, v in as_dict.items() if k != "num_samples")

    # The teacher model instead of its logits gives the same report.
    assert evaluate(student=student, teacher_logits=None, teacher_model=teacher, x=x, y=y) == report


def test_evaluate_without_teacher_logits(student: torch.nn.Module) -> None:
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    report = evaluate(student=student, teacher_logits=None, x=x, y=y)
    assert report.teacher_accuracy is None and report.agreement is None and report.mean_kl is None
    assert isinstance(report.student_accuracy, float)


def test_size_report_with_a_teacher_module(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    report = size_report(student, teacher, input_shape=(6,), batch_size=8, repeats=2, warmup=0)
    s, t = count_params(student), count_params(teacher)
    assert (report.student_parameters, report.teacher_parameters) == (s, t)
    assert report.compression_ratio == t / s
    assert report.compression_ratio > 1
    assert report.student_macs == estimate_macs(student, (6,)) == 6 * 8 + 8 * 3
    assert report.teacher_macs == estimate_macs(teacher, (6,))
    assert report.student_latency_s > 0 and report.teacher_latency_s > 0
    assert report.speedup == report.teacher_latency_s / report.student_latency_s
    json.dumps(report.to_dict())


def test_size_report_without_a_teacher_module(student: torch.nn.Module) -> None:
    report = size_report(student, None, input_shape=(6,), batch_size=8, repeats=2, warmup=0)
    for key in ("teacher_parameters", "compression_ratio", "teacher_macs", "teacher_latency_s", "speedup"):
        assert getattr(report, key) is None

    # An ONNX teacher: a callable is timed; its parameter count comes from the caller.
    report = size_report(student, lambda b: b @ torch.ones(6, 3), input_shape=(6,), teacher_parameters=1000,
                         batch_size=8, repeats=2, warmup=0)
    assert report.teacher_parameters == 1000
    assert report.compression_ratio == 1000 / count_params(student)
    assert report.teacher_macs is None and report.teacher_latency_s > 0

    # Explicit numbers win over measurement.
    report = size_report(student, None, input_shape=(6,), teacher_parameters=500, teacher_latency=2.0,
                         batch_size=8, repeats=2, warmup=0)
    assert report.speedup == 2.0 / report.student_latency_s
    assert report.compression_ratio == 500 / count_params(student)
