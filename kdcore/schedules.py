"""Learning-rate schedules as pure functions of the step: no scheduler object to
checkpoint, and a resumed run gets exactly the same rates."""

from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, schedule: str, total_steps: int, steps_per_epoch: int,
          step_size: int = 30, gamma: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based).

    cosine: base_lr · ½(1 + cos(π·step/total_steps)), reaching 0 after the last step.
    step: base_lr · gamma^(epoch // step_size), epoch = step // steps_per_epoch.
    constant: base_lr.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = min(step, total_steps) / max(total_steps, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return base_lr * gamma ** (epoch // step_size)
    raise ValueError(f"unknown schedule {schedule!r}")
