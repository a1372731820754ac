"""1-D convolutional network for signals such as mnist1d (input (L,) or (C, L)).

No downsampling between layers ("same" padding, stride 1), then global pooling: the network takes
any length L ≥ 4 and its cost grows linearly with L."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdcore.models.architecture import (
    ARCHITECTURES,
    Architecture,
    boolean,
    int_list,
    one_of,
    param,
    positive_int,
    probability_below_one,
)

MIN_LENGTH = 4


@dataclass(frozen=True)
class CNN1dParams:
    channels: list[int] = param([32, 32], int_list(4096))
    kernel_size: int = param(5, positive_int(15))
    batch_norm: bool = param(True, boolean)
    pool: str = param("avg", one_of("avg", "max"))
    dropout: float = param(0.0, probability_below_one)


class CNN1d(nn.Module):
    """[Conv1d → BN → ReLU] per channel count → global avg or max pool → Dropout → Linear."""

    def __init__(self, in_channels: int, num_classes: int, params: CNN1dParams):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for out in params.channels:
            # No conv bias before BN: BN's shift makes it redundant.
            layers.append(nn.Conv1d(width, out, params.kernel_size, padding="same", bias=not params.batch_norm))
            if params.batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(nn.ReLU())
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1) if params.pool == "avg" else nn.AdaptiveMaxPool1d(1)
        self.dropout = nn.Dropout(params.dropout) if params.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # (N, L): one channel
            x = x.unsqueeze(1)
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


def _check_shape(params: CNN1dParams, shape: tuple[int, ...]) -> str | None:
    if len(shape) not in (1, 2):
        return "a 1-D convolution needs (L,) or (C, L) per sample"
    if shape[-1] < MIN_LENGTH:
        return f"the signal length must be at least {MIN_LENGTH}"
    return None


def _build(params: CNN1dParams, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    in_channels = 1 if len(shape) == 1 else shape[0]
    return CNN1d(in_channels, num_classes, params)


ARCHITECTURES.register("cnn1d")(
    Architecture(CNN1dParams, _check_shape, _build, "1-D convolutions for signals; input (L,) or (C, L)")
)
