"""Model size and cost, reported next to accuracy so users can weigh a student against its
teacher (size and latency ratios)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def count_params(model: nn.Module) -> int:
    """Every parameter, trainable or frozen (buffers such as BN running statistics excluded):
    the number of weights the exported file will hold, whatever was being trained."""
    return sum(p.numel() for p in model.parameters())


def estimate_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply–accumulates of one sample's forward pass, counted by forward hooks on Linear,
    Conv1d and Conv2d only (the layers that dominate the cost; BN, activations, pooling and biases
    are ignored). A Linear costs in×out per output row; a convolution costs
    (in_channels / groups) × kernel area per output element. The module runs once in eval mode on
    a zero sample, without gradients; each submodule's train/eval mode is restored afterwards."""
    macs = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += module.in_features * output.numel()
        else:  # Conv1d / Conv2d
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs += per_output * output.numel()

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes.items():
            m.training = training
    return int(macs)
