"""The pipeline on a CUDA device: cached and live teacher logits, every augmentation on the GPU,
bf16 autocast, repeats, and a stop/resume from CUDA checkpoints. Skipped without a CUDA device
(CI and the development machine have none); run on a lent GPU machine with
`python3 -m pytest --confcutdir=tests/kdcore tests/kdcore/test_cuda_paths.py` (the kdcore tests need
no service package)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.models import build_model
from kdcore.pipeline import run_distillation
from tests.kdcore.factories import (PhaseRecorder, StopAfterFirstCheckpoint, distill_spec, save_state_dict,
                                    stop_then_resume)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device on this machine")]


def _cuda(**hp) -> dict:
    return {"device": "cuda", **hp}


def test_cached_logits_with_repeats_train_on_the_gpu(files, tmp_path):
    torch.cuda.reset_peak_memory_stats()
    result = run_distillation(distill_spec(files["state_dict"], epochs=4, repeats=2, **_cuda()),
                              out_dir=tmp_path, export_onnx_file=True)
    assert torch.cuda.max_memory_allocated() > 0  # the runs were on the GPU
    assert result.student.accuracy > 0.8 and result.baseline.accuracy is not None
    assert result.repeats.seeds == [0, 1] and None not in result.repeats.student.values
    assert (tmp_path / "student.onnx").exists() and result.onnx == "student.onnx"


@pytest.mark.parametrize("augment", [["noise"], ["mixup"], ["noise", "mixup"]])
def test_live_teacher_on_augmented_vectors(files, tmp_path, augment):
    cb = PhaseRecorder()
    result = run_distillation(distill_spec(files["state_dict"], epochs=3, augment=augment, **_cuda()),
                              out_dir=tmp_path, callbacks=cb, export_onnx_file=False)
    assert [t for t, _ in cb.events if t.startswith("teacher_")] == ["teacher_live"]
    assert result.student.accuracy > 0.5


def _images(tmp_path, n: int = 512):
    """Class k: a bright k-th column band on 3×8×8 noise; a lenet teacher trained on it."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.3
    for k in range(4):
        x[y == k, :, :, 2 * k:2 * k + 2] += 2.0
    np.savez(tmp_path / "images.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    params = {"channels": [8, 16]}
    teacher = build_model("cnn2d", params, input_shape=(3, 8, 8), num_classes=4)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(teacher(x), y).backward()
        opt.step()
    return save_state_dict(teacher.eval(), tmp_path / "teacher.safetensors"), params


def test_crop_flip_on_images_with_a_live_teacher(tmp_path):
    path, params = _images(tmp_path)
    spec = distill_spec(path, dataset={"train_path": str(tmp_path / "images.npz")}, epochs=3,
                        augment=["crop_flip"], shift_max=2, **_cuda())
    spec.teacher.arch, spec.teacher.arch_params = "cnn2d", params
    spec.student.arch, spec.student.arch_params = "cnn2d", {"channels": [4, 8]}
    result = run_distillation(spec, out_dir=tmp_path / "out", export_onnx_file=False)
    assert result.student.accuracy is not None and result.student.accuracy > 0.25


def test_a_stopped_cuda_run_resumes_from_its_checkpoints(files, tmp_path):
    spec = distill_spec(files["state_dict"], baseline=False, epochs=3, **_cuda())
    cb, result = stop_then_resume(spec, tmp_path, StopAfterFirstCheckpoint())
    assert [m.epoch for m in cb.epochs] == [2, 3]  # the resumed run trained only what was left
    assert result.student.epochs_run == 3 and result.student.accuracy > 0.5

