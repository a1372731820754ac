"""Multi-layer perceptron: the smallest student, and the only family that takes any input shape
(each sample is flattened)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from kdcore.models.architecture import ARCHITECTURES, Architecture, int_list, param, probability_below_one


@dataclass(frozen=True)
class MLPParams:
    hidden_sizes: list[int] = param([128], int_list(65536))
    dropout: float = param(0.0, probability_below_one)


class MLP(nn.Module):
    """Flatten → [Linear → ReLU → Dropout] per hidden size → Linear to the logits."""

    def __init__(self, in_features: int, hidden_sizes: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _check_shape(params: MLPParams, shape: tuple[int, ...]) -> str | None:
    return None  # any shape: the sample is flattened


def _build(params: MLPParams, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), params.hidden_sizes, num_classes, params.dropout)


ARCHITECTURES.register("mlp")(
    Architecture(MLPParams, _check_shape, _build, "fully connected; any input shape, flattened")
)
