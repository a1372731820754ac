"""The reference setups in examples/ (docs/RESULTS.md): every spec is one the service accepts, the
image generator is deterministic and writes files the service reads, and a reference spec runs
through the worker's pipeline entry point (run_distillation) with its sweep and baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.data import read_dataset_file
from kdcore.pipeline import run_distillation
from kdcore.spec import DistillSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SPECS = sorted(EXAMPLES.glob("*.json"))


def test_there_is_a_spec_per_reference_setup():
    assert {p.stem for p in SPECS} == {"mnist1d_cnn_to_cnn", "mnist1d_cnn_to_mlp", "digits_mlp_to_mlp",
                                       "shapes32_resnet32x4_to_resnet8x4"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_each_spec_is_a_valid_sweep_with_a_baseline(path):
    spec = DistillSpec.from_dict(json.loads(path.read_text()))
    assert spec.baseline is True and spec.hyperparameters.is_sweep
    assert len(spec.hyperparameters.grid()) == 9
    assert 1.0 in spec.hyperparameters.alpha  # labels alone is a point: the sweep never does worse than it
    assert spec.teacher.path.startswith("examples/teachers/") and spec.teacher.arch


def test_the_image_task_is_deterministic_and_readable(tmp_path):
    for out in (tmp_path / "a", tmp_path / "b"):
        subprocess.run([sys.executable, str(EXAMPLES / "make_images.py"), "--out", str(out), "--train", "60",
                        "--test", "20"], check=True, capture_output=True)
    a, b = np.load(tmp_path / "a" / "shapes32_train.npz"), np.load(tmp_path / "b" / "shapes32_train.npz")
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
    ds = read_dataset_file(str(tmp_path / "a" / "shapes32_train.npz"))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.num_samples == 60


def test_the_digits_reference_spec_runs_through_the_pipeline(tmp_path, monkeypatch):
    """The digits spec with a tiny teacher made by make_teachers' own function, 2 epochs: the
    summary has the teacher, the baseline and the chosen sweep point that reproduce.py reads."""
    torch.set_num_threads(1)
    sys.path.insert(0, str(EXAMPLES))
    import make_teachers

    monkeypatch.setattr(make_teachers, "TEACHER_DIR", tmp_path / "teachers")
    monkeypatch.setitem(make_teachers.TEACHERS, "digits_mlp", ("digits", "mlp", {"hidden_sizes": [256, 256]}, 2, 1e-3))
    teacher = make_teachers.make("digits_mlp")
    data = json.loads((EXAMPLES / "digits_mlp_to_mlp.json").read_text())
    data["teacher"]["path"] = str(teacher)
    data["hyperparameters"].update(epochs=2, temperature=[2, 4], alpha=[0.5])
    summary = run_distillation(DistillSpec.from_dict(data), out_dir=tmp_path / "out", export_onnx_file=False).to_dict()
    assert summary["teacher"]["accuracy"] > 0.5
    assert summary["baseline"]["accuracy"] is not None
    assert len(summary["sweep"]["points"]) == 2
    assert summary["temperature"] == summary["sweep"]["best"]["temperature"]
    assert summary["distillation_gain"] == pytest.approx(summary["student"]["accuracy"] - summary["baseline"]["accuracy"])
