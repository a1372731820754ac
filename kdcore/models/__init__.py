"""Student and teacher architectures by name.

Importing this package registers every family (mlp, cnn1d, lenet, cnn2d, resnet, resnet8x4,
resnet32x4) in `ARCHITECTURES`, so a name in a job spec always resolves.
"""

from kdcore.models.architecture import (
    ARCHITECTURES,
    Architecture,
    build_model,
    check_input_shape,
    resolve_arch_params,
)
from kdcore.models.complexity import count_params, estimate_macs

# Registration happens on import; these modules are imported for that side effect.
from kdcore.models import cnn1d, cnn2d, mlp, resnet  # noqa: E402,F401  isort: skip

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "build_model",
    "check_input_shape",
    "count_params",
    "estimate_macs",
    "resolve_arch_params",
]
