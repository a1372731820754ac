"""hyperparameters.repeats: the student and the baseline trained with several seeds, reported as
mean ± standard deviation, the delivered student being the first seed's."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from kdcore.data import load_builtin
from kdcore.errors import SpecError
from kdcore.pipeline import PHASES, run_distillation
from kdcore.results import Spread
from kdcore.spec import MAX_REPEATS, MAX_SWEEP_EPOCHS, DistillSpec
from tests.kdcore.factories import PhaseRecorder, StopAfterFirstCheckpoint, distill_spec, stop_then_resume


def _spec_error(hp: dict) -> SpecError:
    with pytest.raises(SpecError) as e:
        DistillSpec.from_dict({"teacher": {"path": "t.safetensors", "arch": "mlp"}, "hyperparameters": hp})
    return e.value


def test_repeats_defaults_to_one_and_is_bounded():
    spec = DistillSpec.from_dict({"teacher": {"path": "t.safetensors", "arch": "mlp"}})
    assert spec.hyperparameters.repeats == 1
    for bad in (0, MAX_REPEATS + 1):
        err = _spec_error({"repeats": bad})
        assert err.field == "hyperparameters.repeats" and "MAX_REPEATS" in str(err)
    err = _spec_error({"repeats": 2, "seed": 2**63 - 1})
    assert err.field == "hyperparameters.repeats" and "2**63" in str(err)
    for wrong_type in ("3", 2.5, True):
        assert _spec_error({"repeats": wrong_type}).field == "hyperparameters.repeats"


def test_repeats_count_against_the_jobs_epoch_budget():
    epochs = MAX_SWEEP_EPOCHS // 4
    DistillSpec.from_dict({"teacher": {"path": "t", "arch": "mlp"},
                           "hyperparameters": {"repeats": 4, "epochs": epochs}})
    err = _spec_error({"repeats": 5, "epochs": epochs})
    assert err.field == "hyperparameters" and "5 repeats" in str(err) and "MAX_SWEEP_EPOCHS" in str(err)
    err = _spec_error({"repeats": 3, "temperature": [1, 2, 4], "epochs": epochs})
    assert "3 points + 2 repeats" in str(err)


def test_spread_is_the_mean_and_sample_standard_deviation():
    s = Spread.of([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7) and s.std == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert Spread.of([0.4]).std == 0.0
    missing = Spread.of([0.4, None])
    assert missing.values == [0.4, None] and missing.mean is None and missing.std is None


@pytest.fixture(scope="module")
def split_files(tmp_path_factory) -> dict:
    """digits as train, validation and test files: no split depends on the seed, so a repeat's
    run is the one-seed job with its seed, exactly."""
    d = tmp_path_factory.mktemp("digits")
    parts = load_builtin("digits")
    paths = {}
    for name, data in (("train", parts["train"].subset(torch.arange(0, 1200))),
                       ("validation", parts["train"].subset(torch.arange(1200, parts["train"].num_samples))),
                       ("test", parts["test"])):
        np.savez(d / f"{name}.npz", x=data.x.numpy(), y=data.y.numpy())
        paths[f"{name}_path"] = str(d / f"{name}.npz")
    return paths


@pytest.fixture(scope="module")
def repeated(files, split_files, tmp_path_factory):
    """seed 5, three repeats, with baseline; and the same spec run alone with seed 6 and seed 5."""
    out = tmp_path_factory.mktemp("repeats")
    cb = PhaseRecorder()
    result = run_distillation(distill_spec(files["state_dict"], dataset=split_files, seed=5, repeats=3),
                              out_dir=out / "r", checkpoint_dir=out / "ckpt", callbacks=cb, export_onnx_file=False)
    alone = {seed: run_distillation(distill_spec(files["state_dict"], dataset=split_files, seed=seed),
                                    out_dir=out / f"s{seed}", export_onnx_file=False) for seed in (5, 6)}
    return result, cb, alone, out


def test_each_repeat_is_the_run_its_seed_gives_alone(repeated):
    result, cb, alone, _ = repeated
    rep = result.repeats
    assert rep.seeds == [5, 6, 7] and rep.metric == "accuracy"
    # the delivered student is the first seed's: the same figures as a one-seed job with seed 5
    assert result.student.accuracy == alone[5].student.accuracy
    assert result.baseline.accuracy == alone[5].baseline.accuracy
    assert rep.student.values[0] == result.student.accuracy
    # the second is exactly what seed 6 trains on its own (CPU runs are deterministic)
    assert rep.student.values[1] == alone[6].student.accuracy
    assert rep.baseline.values[1] == alone[6].baseline.accuracy
    assert len(set(rep.student.values)) > 1  # the seeds differ, so the runs do
    assert rep.student.mean == pytest.approx(statistics.mean(rep.student.values))
    assert rep.student.std == pytest.approx(statistics.stdev(rep.student.values))
    assert rep.baseline.std == pytest.approx(statistics.stdev(rep.baseline.values))
    assert rep.gain.values == pytest.approx([s - b for s, b in zip(rep.student.values, rep.baseline.values)])
    assert result.to_dict()["repeats"]["gain"]["mean"] == pytest.approx(statistics.mean(rep.gain.values))


def test_repeats_report_a_phase_and_one_event_each_but_no_metric_rows(repeated):
    result, cb, _, out = repeated
    assert cb.phases == list(PHASES)
    repeats = [d for t, d in cb.events if t == "repeat"]
    assert [d["seed"] for d in repeats] == [6, 7]
    assert repeats[0]["student"]["accuracy"] == result.repeats.student.values[1]
    assert repeats[1]["baseline"]["accuracy"] == result.repeats.baseline.values[2]
    # per-epoch metrics stay those of the delivered student and its baseline
    assert {m.run for m in cb.epochs} == {"student", "baseline"}
    rows = [json.loads(line) for line in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == {"student", "baseline"}
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == [
        "baseline", "baseline-seed6", "baseline-seed7", "student", "student-seed6", "student-seed7"]


def test_one_seed_has_no_repeats(repeated):
    _, _, alone, _ = repeated
    assert alone[5].repeats is None and alone[5].to_dict()["repeats"] is None


def test_an_interrupted_repeat_resumes_and_ends_as_an_uninterrupted_job(files, split_files, repeated, tmp_path):
    result, _, _, _ = repeated
    spec = distill_spec(files["state_dict"], dataset=split_files, seed=5, repeats=3)
    _, resumed = stop_then_resume(spec, tmp_path, StopAfterFirstCheckpoint(repeats_only=True))
    assert resumed.repeats == result.repeats
    assert resumed.student.accuracy == result.student.accuracy


def test_a_sweep_repeats_its_chosen_point(files, split_files, tmp_path):
    swept = run_distillation(distill_spec(files["state_dict"], dataset=split_files, temperature=[1.0, 8.0], repeats=2,
                                          baseline=False), out_dir=tmp_path / "sweep", export_onnx_file=False)
    chosen = swept.sweep.best.temperature
    alone = run_distillation(distill_spec(files["state_dict"], dataset=split_files, temperature=chosen, seed=1,
                                          baseline=False), out_dir=tmp_path / "alone", export_onnx_file=False)
    assert swept.repeats.seeds == [0, 1] and swept.repeats.baseline is None and swept.repeats.gain is None
    assert swept.repeats.student.values[1] == alone.student.accuracy
