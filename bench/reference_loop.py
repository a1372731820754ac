"""The plain PyTorch distillation loop that B1 compares kdcore's trainer with: same model, data,
batch size, optimizer, steps and a live teacher. About 40 lines, nothing clever."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def plain_kd_loss(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, *, temperature: float,
                  alpha: float) -> torch.Tensor:
    """alpha x cross-entropy + (1 - alpha) x T^2 x KL(teacher || student) at temperature T, written out."""
    hard = F.cross_entropy(zs, y)
    soft = F.kl_div(F.log_softmax(zs / temperature, dim=1), F.log_softmax(zt / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return alpha * hard + (1 - alpha) * soft


def reference_epochs(student, teacher, x, y, *, epochs: int, batch_size: int, lr: float,
                     temperature: float = 4.0, alpha: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for xb, yb in loader:
            with torch.no_grad():
                zt = teacher(xb)
            loss = plain_kd_loss(student(xb), zt, yb, temperature=temperature, alpha=alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
