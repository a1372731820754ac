"""2-D convolutional networks for images (C, H, W): LeNet-5 and a small configurable CNN.

Both end in adaptive pooling so that one definition takes any image of at least 4×4; a flat
vector is refused rather than reshaped, because guessing H and W from a length is how a
user's 8×8 digits silently become a 1×64 strip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdcore.models.architecture import (
    ARCHITECTURES,
    Architecture,
    boolean,
    int_list,
    param,
    positive_int,
    probability_below_one,
)

MIN_SIDE = 4


def _check_image(shape: tuple[int, ...], min_side: int) -> str | None:
    if len(shape) != 3:
        return "a 2-D convolution needs (C, H, W) per sample"
    if shape[1] < min_side or shape[2] < min_side:
        return f"height and width must be at least {min_side}"
    return None


@dataclass(frozen=True)
class LeNetParams:
    dropout: float = param(0.0, probability_below_one)


class LeNet5(nn.Module):
    """LeCun et al. (1998) LeNet-5 with ReLU and max pooling: conv 6@5×5 → pool → conv 16@5×5 →
    pool → 120 → 84 → classes. Both convs pad by 2, so inputs from 4×4 upwards work; the first
    fully connected layer takes the 16×(H/4)×(W/4) map as it is (sized at build time from the
    input shape: no adaptive pooling, which the ONNX exporter cannot express for every size)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, *,
                 height: int = 32, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * (height // 4) * (width // 4), 120),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class CNN2dParams:
    channels: list[int] = param([32, 64], int_list(4096))
    kernel_size: int = param(3, positive_int(15))
    batch_norm: bool = param(True, boolean)
    dropout: float = param(0.0, probability_below_one)


class CNN2d(nn.Module):
    """[Conv → BN → ReLU → MaxPool 2] per channel count → global average pool → Dropout → Linear.

    The last block is not pooled (the global pool follows), and a block whose map is already
    smaller than 2×2 is not pooled either: which blocks pool is fixed at build time from the
    input shape."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, params: CNN2dParams):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate(params.channels):
            # No conv bias before BN: BN's shift makes it redundant.
            layers.append(nn.Conv2d(channels, out, params.kernel_size, padding="same", bias=not params.batch_norm))
            if params.batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            if i < len(params.channels) - 1 and height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(params.dropout) if params.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


ARCHITECTURES.register("lenet")(
    Architecture(
        LeNetParams,
        lambda params, shape: _check_image(shape, MIN_SIDE),
        lambda params, shape, num_classes: LeNet5(shape[0], num_classes, params.dropout,
                                                  height=shape[1], width=shape[2]),
        "LeNet-5; input (C, H, W) with H, W >= 4",
    )
)

ARCHITECTURES.register("cnn2d")(
    Architecture(
        CNN2dParams,
        lambda params, shape: _check_image(shape, MIN_SIDE),
        lambda params, shape, num_classes: CNN2d(shape[0], shape[1], shape[2], num_classes, params),
        "configurable 2-D CNN; input (C, H, W) with H, W >= 4",
    )
)
