"""What the kdcore tests build again and again: a digits teacher, its files, a fast spec, a
callbacks recorder. Plain functions and constants; the fixtures built on them are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import torch

import pytest

from harness.teachers import save_state_dict, train_digits_mlp
from kdcore.pipeline import PipelineCallbacks, run_distillation
from kdcore.results import DistillResult
from kdcore.spec import DistillSpec
from kdcore.trainer import Stopped

__all__ = ["FAST", "STUDENT", "TEACHER_PARAMS", "PhaseRecorder", "StopAfterFirstCheckpoint", "distill_spec",
           "save_state_dict", "stop_then_resume", "train_digits_teacher"]

TEACHER_PARAMS = {"hidden_sizes": [64]}
STUDENT = {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}}
FAST = {"epochs": 2, "learning_rate": 0.01, "device": "cpu"}


def train_digits_teacher(num_classes: int = 10) -> torch.nn.Module:
    """An mlp [64] trained for 50 full-batch Adam steps on the builtin digits train split (~95 %)."""
    return train_digits_mlp(TEACHER_PARAMS["hidden_sizes"], steps=50, num_classes=num_classes)


def distill_spec(teacher_path: Path, *, teacher_arch: bool = True, dataset: dict | None = None,
                 baseline: bool = True, **hp) -> DistillSpec:
    """A fast digits spec (2 epochs) with this teacher file; `hp` overrides hyperparameters."""
    teacher = {"path": str(teacher_path)}
    if teacher_arch:
        teacher |= {"arch": "mlp", "arch_params": TEACHER_PARAMS}
    return DistillSpec.from_dict({
        "teacher": teacher, "student": STUDENT, "dataset": dataset or {"builtin": "digits"},
        "hyperparameters": {**FAST, **hp}, "baseline": baseline,
    })


class PhaseRecorder(PipelineCallbacks):
    def __init__(self):
        self.phases: list[str] = []
        self.events: list[tuple[str, dict | None]] = []
        self.epochs = []

    def on_phase(self, phase):
        self.phases.append(phase)

    def on_event(self, type, message, data=None):
        self.events.append((type, data))

    def on_epoch_end(self, metrics):
        self.epochs.append(metrics)


class StopAfterFirstCheckpoint(PhaseRecorder):
    """Asks to stop once the job's first checkpoint is written; `repeats_only`: the first checkpoint of a
    repeat run (`on_repeat_checkpoint`, hyperparameters.repeats)."""

    def __init__(self, *, repeats_only: bool = False):
        super().__init__()
        self.saved, self.repeats_only = 0, repeats_only

    def on_checkpoint(self, info):
        self.saved += not self.repeats_only

    def on_repeat_checkpoint(self, info):
        self.saved += 1

    def should_stop(self):
        return self.saved >= 1


def stop_then_resume(spec: DistillSpec, tmp_path: Path, stopper: PipelineCallbacks,
                     ) -> tuple[PhaseRecorder, DistillResult]:
    """Run `spec` until `stopper` stops it (no summary is written), then again on the same checkpoint
    directory: the second run's recorder and result."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Stopped):
        run_distillation(spec, out_dir=out, checkpoint_dir=ckpt, callbacks=stopper, export_onnx_file=False)
    assert not (out / "summary.json").exists()
    cb = PhaseRecorder()
    return cb, run_distillation(spec, out_dir=out, checkpoint_dir=ckpt, callbacks=cb, export_onnx_file=False)
