"""What the kdcore tests build again and again: a digits teacher, its files, a fast spec, a
callbacks recorder. Plain functions and constants; the fixtures built on them are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from kdcore.data import load_builtin
from kdcore.models import build_model
from kdcore.pipeline import PipelineCallbacks
from kdcore.spec import DistillSpec

TEACHER_PARAMS = {"hidden_sizes": [64]}
STUDENT = {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}}
FAST = {"epochs": 2, "learning_rate": 0.01, "device": "cpu"}


def train_digits_teacher(num_classes: int = 10) -> torch.nn.Module:
    """An mlp [64] trained for 50 full-batch Adam steps on the builtin digits train split (~95 %)."""
    train = load_builtin("digits")["train"]
    y = train.y % num_classes
    torch.manual_seed(0)
    model = build_model("mlp", TEACHER_PARAMS, input_shape=(64,), num_classes=num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x), y).backward()
        opt.step()
    return model.eval()


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


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
