"""CIFAR-style ResNet (He et al. 2016, section 4.2): a 3×3 stem of 16w channels, then three stages
of (depth − 2)/6 BasicBlocks with 16w, 32w and 64w channels (the last two start with stride 2),
global average pooling and a linear classifier. depth = 6n + 2.

`resnet8x4` and `resnet32x4` are the names the distillation literature uses for the usual
student/teacher pair (depth 8 and 32 at width 4); here they are the same family with those
defaults. Shortcuts that change shape use a 1×1 convolution + BN (option B) rather than the
paper's zero-padding (option A), as the common KD code bases do. Note those code bases (e.g.
RepDistiller) widen resnet8x4/32x4 to a 32-64-128-256 layout; this family keeps the paper's
16w-32w-64w stages with a 16w stem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdcore.models.architecture import ARCHITECTURES, Architecture, one_of, param, positive_int

DEPTHS = (8, 14, 20, 32, 56)
MAX_WIDTH = 16
MIN_SIDE = 8


@dataclass(frozen=True)
class ResNetParams:
    depth: int = param(20, one_of(*DEPTHS))
    width: int = param(1, positive_int(MAX_WIDTH))


@dataclass(frozen=True)
class ResNet8x4Params(ResNetParams):
    depth: int = param(8, one_of(*DEPTHS))
    width: int = param(4, positive_int(MAX_WIDTH))


@dataclass(frozen=True)
class ResNet32x4Params(ResNetParams):
    depth: int = param(32, one_of(*DEPTHS))
    width: int = param(4, positive_int(MAX_WIDTH))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int, width: int):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem = 16 * width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()
        )
        stages: list[nn.Module] = []
        channels = stem
        for stage, out in enumerate((16 * width, 32 * width, 64 * width)):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        # He initialisation for the convs, as in the paper; drawn from the caller's RNG state.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _check_shape(params: ResNetParams, shape: tuple[int, ...]) -> str | None:
    if len(shape) != 3:
        return "a ResNet needs (C, H, W) per sample"
    if shape[1] < MIN_SIDE or shape[2] < MIN_SIDE:
        return f"height and width must be at least {MIN_SIDE} (two stride-2 stages)"
    return None


def _build(params: ResNetParams, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CIFARResNet(shape[0], num_classes, params.depth, params.width)


for _name, _params in (("resnet", ResNetParams), ("resnet8x4", ResNet8x4Params), ("resnet32x4", ResNet32x4Params)):
    ARCHITECTURES.register(_name)(
        Architecture(_params, _check_shape, _build, "CIFAR-style ResNet; input (C, H, W) with H, W >= 8")
    )
