"""The teacher-logit cache: the main speed lever of distillation.

The teacher is the biggest model in the job. When it is deterministic (eval mode, no dropout at
inference, fixed weights) and the inputs are not augmented, its logits for a training sample are
the same every epoch, so they are computed once here and indexed by the trainer afterwards.
With augmentation the inputs change every step, and the teacher must run live.
"""

from __future__ import annotations

import torch

from kdcore.spec import Hyperparameters
from kdcore.teachers import Teacher


def can_cache(teacher: Teacher, hp: Hyperparameters) -> bool:
    """True when every epoch would ask the teacher the same questions."""
    return teacher.deterministic and not hp.augmentations


def compute_teacher_logits(teacher: Teacher, x: torch.Tensor, *, indices: torch.Tensor | None = None,
                           batch_size: int = 1024, device: torch.device | str = "cpu",
                           on_progress=None) -> torch.Tensor:
    """Teacher logits for every row of `x`, float32 on the CPU, in chunks of `batch_size`.

    `indices` are the rows' positions in the file the teacher's precomputed logits are aligned
    with (only precomputed-logit teachers use them); default 0..N-1.
    """
    n = x.shape[0]
    if indices is None:
        indices = torch.arange(n)
    out = []
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size].to(device)
        out.append(teacher.logits(xb, indices[start:start + batch_size]).float().cpu())
        if on_progress is not None:
            on_progress(min(start + batch_size, n), n)
    if not out:
        return torch.empty(0, teacher.num_classes)
    return torch.cat(out)
