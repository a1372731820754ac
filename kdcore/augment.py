"""Augmented views for the student, which the teacher then labels live (Beyer et al. 2022, "a good
teacher is patient and consistent": teacher and student see exactly the same view).

`hyperparameters.augment` names the transforms; they are applied in the fixed order shift,
crop_flip, mixup, noise whatever order the list gives. Each draws from torch's global generator
on the batch's device, which the trainer's checkpoints save and restore, so a resumed run sees the
same views as an uninterrupted one.

Mixup changes the labels too: a mixed row's hard target is λ·onehot(y_i) + (1 − λ)·onehot(y_j),
and a row mixed with an unlabelled one is unlabelled (its soft term still counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.data import UNLABELED
from kdcore.errors import SpecError

ORDER = ("shift", "crop_flip", "mixup", "noise")


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: row i is lam·x_i + (1 − lam)·x_perm[i]."""

    lam: float
    perm: Tensor


def check_input_shape(augmentations: tuple[str, ...], input_shape: tuple[int, ...]) -> None:
    """SpecError(field="hyperparameters.augment") when a transform does not fit the inputs."""
    if "shift" in augmentations and len(input_shape) not in (1, 2):
        raise SpecError(f"shift is for 1-D signals (input shape L or C×L); the inputs are {list(input_shape)}",
                        field="hyperparameters.augment")
    if "crop_flip" in augmentations and len(input_shape) != 3:
        raise SpecError(f"crop_flip is for C×H×W images; the inputs are {list(input_shape)}",
                        field="hyperparameters.augment")


def augment(x: Tensor, augmentations: tuple[str, ...], *, noise_std: float, shift_max: int,
            mixup_alpha: float) -> tuple[Tensor, Mix | None]:
    """The augmented view of a batch and, when mixup is on, how it was mixed."""
    mix = None
    for name in ORDER:
        if name not in augmentations or len(x) == 0:
            continue
        if name == "shift":
            x = random_shift(x, shift_max)
        elif name == "crop_flip":
            x = random_crop_flip(x, shift_max)
        elif name == "mixup":
            lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample())
            perm = torch.randperm(len(x), device=x.device)
            x, mix = lam * x + (1.0 - lam) * x[perm], Mix(lam, perm)
        elif name == "noise":
            x = x + noise_std * torch.randn_like(x)
    return x, mix


def random_shift(x: Tensor, shift_max: int) -> Tensor:
    """Each row rolled circularly along its last axis by its own shift in [-shift_max, shift_max]."""
    length = x.shape[-1]
    shifts = torch.randint(-shift_max, shift_max + 1, (len(x),), device=x.device)
    index = (torch.arange(length, device=x.device) - shifts[:, None]) % length  # N × L
    index = index.view(len(x), *([1] * (x.dim() - 2)), length).expand_as(x)
    return torch.gather(x, -1, index)


def random_crop_flip(x: Tensor, padding: int) -> Tensor:
    """N×C×H×W: zero-pad by `padding`, crop a random H×W window per row, flip half the rows
    horizontally (the CIFAR recipe)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)  # N × H
    cols = left[:, None] + torch.arange(w, device=x.device)  # N × W
    flip = torch.rand(n, device=x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def targets(y: Tensor, mix: Mix | None, num_classes: int) -> Tensor:
    """The hard targets of an augmented batch: `y` itself (UNLABELED where a row has no label)
    without mixup; with it, N×C mixed label weights, an all-zero row where either source row is
    unlabelled."""
    if mix is None:
        return y
    labeled = y != UNLABELED
    onehot = F.one_hot(y.clamp_min(0), num_classes).float() * labeled[:, None]
    mixed = mix.lam * onehot + (1.0 - mix.lam) * onehot[mix.perm]
    return mixed * (labeled & labeled[mix.perm])[:, None]
