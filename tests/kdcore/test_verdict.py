"""The verdict's uncertainty (McNemar's exact test on the student's and the baseline's disagreements)
and the warnings of a suspect result, against hand-computed values; then both in a real run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcore import load_builtin, verdict
from kdcore.pipeline import EVENT_LEVELS, run_distillation
from kdcore.results import Comparison
from kdcore.verdict import (CHANCE_MARGIN, diverged, mcnemar_exact, near_chance, paired_comparison,
                            quality_warnings)
from tests.kdcore.factories import PhaseRecorder, distill_spec, save_state_dict, train_digits_teacher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::torch.jit.TracerWarning")


# ---- McNemar's exact test: p = min(1, 2 · Σ_{i ≤ min(b,c)} C(b+c, i) / 2^(b+c)) ----

@pytest.mark.parametrize("b, c, p", [
    (0, 6, 0.03125),  # 2 · 1/64
    (6, 0, 0.03125),  # symmetric
    (0, 5, 0.0625),  # 2 · 1/32: five rows one way is not enough at 0.05
    (1, 9, 0.021484375),  # 2 · (1 + 10)/1024
    (2, 10, 0.03857421875),  # 2 · (1 + 12 + 66)/4096
    (3, 3, 1.0), (10, 10, 1.0), (0, 0, 1.0),  # b = c, and no disagreement at all
    (5, 6, 1.0),  # Σ_{i ≤ 5} C(11, i) = 1024 = 2^10: the doubled tail is exactly 1
    (0, 1, 1.0),
])
def test_mcnemar_exact_matches_hand_computed_values(b, c, p):
    assert mcnemar_exact(b, c) == p


def test_mcnemar_exact_is_the_doubled_binomial_tail_for_every_small_table():
    for b in range(25):
        for c in range(25):
            n, k = b + c, min(b, c)
            tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 0.5
            assert mcnemar_exact(b, c) == pytest.approx(min(1.0, 2 * tail), rel=1e-15), (b, c)


def test_the_log_space_sum_for_many_rows_agrees_with_the_exact_one(monkeypatch):
    exact = {(b, c): mcnemar_exact(b, c) for b, c in [(0, 6), (1, 9), (40, 70), (300, 360), (999, 1100), (7, 7)]}
    monkeypatch.setattr(verdict, "EXACT_MAX_ROWS", 0)
    for (b, c), p in exact.items():
        assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-10), (b, c)


def test_many_rows_are_fast_and_agree_with_the_normal_approximation():
    b, c = 100_000, 101_500  # n past EXACT_MAX_ROWS: the log-space path
    z = (abs(b - c) - 1) / math.sqrt(b + c)  # continuity-corrected normal approximation
    assert mcnemar_exact(b, c) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.02)
    assert mcnemar_exact(50_000, 50_000) == 1.0


@pytest.mark.parametrize("b, c", [(-1, 3), (2.5, 1), (True, 2), (None, 1)])
def test_mcnemar_exact_refuses_what_is_not_a_count(b, c):
    with pytest.raises((ValueError, TypeError)):
        mcnemar_exact(b, c)


def test_paired_comparison_counts_the_disagreements_and_decides_at_alpha():
    # 10 rows both right, 2 both wrong, 0 only the student, 6 only the baseline
    student = torch.tensor([True] * 10 + [False] * 2 + [False] * 6)
    baseline = torch.tensor([True] * 10 + [False] * 2 + [True] * 6)
    out = paired_comparison(student, baseline)
    assert out == Comparison(test="mcnemar_exact", alpha=0.05, rows=18, student_only_right=0,
                             baseline_only_right=6, p_value=0.03125, verdict="worse")
    assert paired_comparison(baseline, student).verdict == "better"
    five = paired_comparison(torch.tensor([True] * 5), torch.tensor([False] * 5))
    assert (five.student_only_right, five.p_value, five.verdict) == (5, 0.0625, "not distinguishable")
    same = paired_comparison(torch.tensor([True, False, True]), torch.tensor([True, False, True]))
    assert (same.p_value, same.verdict) == (1.0, "not distinguishable")
    with pytest.raises(ValueError):
        paired_comparison(torch.tensor([True]), torch.tensor([True, False]))


# ---- warnings: near chance, diverged ----

def test_near_chance_is_below_one_over_classes_plus_the_margin():
    assert CHANCE_MARGIN == 0.05
    assert near_chance(0.149, 10) and near_chance(0.05, 10) and not near_chance(0.151, 10)
    assert near_chance(0.54, 2) and not near_chance(0.56, 2)
    assert not near_chance(None, 10)  # not scored: nothing to flag


def test_diverged_is_a_last_epoch_that_gave_back_more_than_half_of_the_gain():
    assert not diverged([2.3, 0.5, 0.2, 0.21])  # noise at the bottom
    assert diverged([2.3, 0.3, 1.5])  # 1.5 > 0.3 + (2.3 − 0.3)/2 = 1.3
    assert not diverged([2.3, 0.3, 1.2])
    assert diverged([1.0, 1.4])  # ended above its start
    assert not diverged([1.0, 1.0]) and not diverged([5.0])


def test_quality_warnings_name_the_model_the_rule_and_the_numbers():
    out = quality_warnings(accuracies={"student": 0.12, "teacher": 0.97}, evaluated_on="test", num_classes=10,
                           losses={"student": [2.3, 0.4, 0.3], "baseline": [2.2, 0.2, 2.0]})
    assert [(w["code"], w["model"]) for w in out] == [("near_chance", "student"), ("diverged", "baseline")]
    assert out[0]["chance"] == 0.1 and out[0]["accuracy"] == 0.12
    assert "12.0 %" in out[0]["message"] and "10.0 %" in out[0]["message"] and "10 classes" in out[0]["message"]
    assert out[1]["last_loss"] == 2.0 and "diverged" in out[1]["message"]
    assert quality_warnings(accuracies={"student": None, "teacher": None}, evaluated_on="test", num_classes=10,
                            losses={}) == []


# ---- in a real run ----

@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_state_dict(train_digits_teacher(), tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


def test_a_run_reports_the_paired_comparison_of_the_same_rows(teacher_file, tmp_path):
    summary = run_distillation(distill_spec(teacher_file), out_dir=tmp_path, export_onnx_file=False).to_dict()
    comparison, rows = summary["comparison"], summary["num_eval_samples"]
    b, c = comparison["student_only_right"], comparison["baseline_only_right"]
    assert comparison["rows"] == rows and comparison["test"] == "mcnemar_exact" and comparison["alpha"] == 0.05
    # the counts come from the same predictions as the accuracies
    assert b - c == round(summary["distillation_gain"] * rows)
    assert comparison["p_value"] == mcnemar_exact(b, c)
    expected = ("not distinguishable" if comparison["p_value"] >= 0.05 else "better" if b > c else "worse")
    assert comparison["verdict"] == expected
    assert summary["warnings"] == []


def test_no_baseline_no_comparison(teacher_file, tmp_path):
    result = run_distillation(distill_spec(teacher_file, baseline=False), out_dir=tmp_path, export_onnx_file=False)
    assert result.comparison is None and result.baseline is None and result.distillation_gain is None
    assert result.to_dict()["comparison"] is None


def test_a_student_near_chance_is_warned_about_in_the_result_and_an_event(teacher_file, tmp_path):
    # training labels shuffled and the hard labels alone (alpha 1): nothing to learn, so the student
    # scores near chance on the real test labels, while the teacher (trained on real labels) does not
    digits = load_builtin("digits")
    train, test = digits["train"], digits["test"]
    shuffled = train.y[torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))]
    np.savez(tmp_path / "train.npz", x=train.x.numpy(), y=shuffled.numpy())
    np.savez(tmp_path / "test.npz", x=test.x.numpy(), y=test.y.numpy())
    cb = PhaseRecorder()
    spec = distill_spec(teacher_file, dataset={"train_path": str(tmp_path / "train.npz"),
                                        "test_path": str(tmp_path / "test.npz")}, alpha=1.0, baseline=False)
    result = run_distillation(spec, out_dir=tmp_path / "out", callbacks=cb, export_onnx_file=False)
    assert result.student.accuracy < 0.15 < 0.9 < result.teacher.accuracy
    codes = [(w["code"], w["model"]) for w in result.warnings]
    assert codes == [("near_chance", "student")]
    events = [data for type, data in cb.events if type == "warning"]
    assert events == result.warnings and EVENT_LEVELS["warning"] == "warning"
