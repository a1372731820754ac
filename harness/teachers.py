"""Small digits teachers for the tests and the benchmarks: an MLP trained with full-batch Adam on
the builtin digits train split, seeded, so the same call gives the same bits."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from kdcore.data import ArrayDataset, load_builtin
from kdcore.models import build_model


def train_digits_mlp(hidden_sizes: list[int], *, steps: int, num_classes: int = 10,
                     train: ArrayDataset | None = None) -> torch.nn.Module:
    """An mlp with these hidden sizes after `steps` full-batch Adam steps (lr 3e-3, seed 0) on
    `train` (the digits train split unless given), labels taken modulo `num_classes`; in eval mode.
    40-60 steps give 95-97 %."""
    train = load_builtin("digits")["train"] if train is None else train
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden_sizes": hidden_sizes}, input_shape=(64,), num_classes=num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x), train.y % num_classes).backward()
        opt.step()
    return model.eval()


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    """The model's state dict as a safetensors file at `path`."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def digits_teacher_file(path: Path, hidden_sizes: list[int], *, steps: int) -> dict:
    """Train a digits teacher, save it at `path`; the job's teacher arch fields for it."""
    save_state_dict(train_digits_mlp(hidden_sizes, steps=steps), path)
    return {"arch": "mlp", "arch_params": {"hidden_sizes": hidden_sizes}}
