"""The architecture registry and the three things a job spec needs from it: resolve the user's
params (defaults filled in, every value checked), check an input shape, and build the module.

Resolving and shape checks build nothing, so the API can run them at POST time and refuse a spec
that cannot run before it becomes a job. Each family module (mlp, cnn1d, cnn2d, resnet) registers
an `Architecture`: its params dataclass, whose fields carry their own checks (`param(...)`), a
shape rule and a builder.

Field names in errors: params errors use f"{field}.{param}" (callers pass e.g.
field="student.arch_params"); an unknown architecture uses the sibling ".arch" of `field`
("student.arch_params" → "student.arch", "arch_params" → "arch") unless `arch_field` is given.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from dataclasses import field as dc_field
from typing import Any, Callable, Sequence

from torch import nn

from kdcore.errors import SpecError
from kdcore.registry import Registry

# A check takes a value from the user's JSON and returns it normalised, or a message saying why
# it is refused. Messages, not exceptions, so the caller attaches the dotted field once.
Check = Callable[[Any], Any]

MAX_NUM_CLASSES = 100_000


class _Refused(Exception):
    pass


def param(default: Any, check: Check) -> Any:
    """A params dataclass field with a default and the check that user values must pass."""
    if isinstance(default, (list, dict)):
        return dc_field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check})
    return dc_field(default=default, metadata={"check": check})


def refuse(message: str) -> None:
    raise _Refused(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(maximum: int) -> Check:
    def check(value: Any) -> int:
        if not _is_int(value) or not 1 <= value <= maximum:
            refuse(f"must be an integer between 1 and {maximum}, got {value!r}")
        return value

    return check


def int_list(maximum: int, *, max_len: int = 16) -> Check:
    """A non-empty list of positive ints, e.g. hidden sizes or conv channels."""

    def check(value: Any) -> list[int]:
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= max_len:
            refuse(f"must be a non-empty list of at most {max_len} integers, got {value!r}")
        if not all(_is_int(v) and 1 <= v <= maximum for v in value):
            refuse(f"every entry must be an integer between 1 and {maximum}, got {value!r}")
        return list(value)

    return check


def probability_below_one(value: Any) -> float:
    """Dropout: 1.0 would zero every activation, so it is excluded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        refuse(f"must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        refuse(f"must be in [0, 1), got {value!r}")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        refuse(f"must be true or false, got {value!r}")
    return value


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> Any:
        # Compare types too: 8.0 == 8 and True == 1, but neither is a valid choice of 8 or 1.
        if not any(type(value) is type(c) and value == c for c in choices):
            refuse(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value

    return check


@dataclass(frozen=True)
class Architecture:
    """One registry entry. `check_shape(params, shape)` returns None when the per-sample input shape
    fits, else a message; `build(params, shape, num_classes)` returns the module."""

    params_type: type
    check_shape: Callable[[Any, tuple[int, ...]], str | None]
    build: Callable[[Any, tuple[int, ...], int], nn.Module]
    description: str = ""


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def _arch_field(field: str, arch_field: str | None) -> str:
    if arch_field is not None:
        return arch_field
    return field.rsplit(".", 1)[0] + ".arch" if "." in field else "arch"


def _resolve(arch: str, params: dict | None, field: str, arch_field: str | None) -> tuple[Architecture, Any]:
    entry = ARCHITECTURES.get(arch, field=_arch_field(field, arch_field))
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise SpecError("must be an object mapping parameter names to values", field=field)
    known = {f.name: f for f in fields(entry.params_type)}
    for key in params:
        if key not in known:
            raise SpecError(
                f"unknown parameter {key!r} for architecture {arch!r}; known: {', '.join(sorted(known))}",
                field=f"{field}.{key}",
            )
    values = {}
    for name, f in known.items():
        if name in params:
            try:
                values[name] = f.metadata["check"](params[name])
            except _Refused as refused:
                raise SpecError(str(refused), field=f"{field}.{name}") from None
    return entry, entry.params_type(**values)


def resolve_arch_params(
    arch: str, params: dict | None, *, field: str = "arch_params", arch_field: str | None = None
) -> dict:
    """The user's params checked and completed with every default, as a JSON-serialisable dict
    (this is what a checkpoint records so the module can be rebuilt from the file alone)."""
    _, resolved = _resolve(arch, params, field, arch_field)
    return asdict(resolved)


def _checked_shape(entry: Architecture, arch: str, params: Any, input_shape: Any, field: str) -> tuple[int, ...]:
    """The per-sample shape as a tuple of ints, or SpecError under `field`."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise SpecError(f"must be a list of positive integers, got {input_shape!r}", field=field)
    if not input_shape or not all(_is_int(d) and d >= 1 for d in input_shape):
        raise SpecError(f"must be a non-empty list of positive integers, got {list(input_shape)!r}", field=field)
    shape = tuple(int(d) for d in input_shape)
    problem = entry.check_shape(params, shape)
    if problem is not None:
        raise SpecError(f"architecture {arch!r} cannot take input shape {list(shape)}: {problem}", field=field)
    return shape


def check_input_shape(
    arch: str,
    params: dict | None,
    input_shape: Sequence[int],
    *,
    field: str = "input_shape",
    params_field: str = "arch_params",
    arch_field: str | None = None,
) -> None:
    """SpecError (field=`field`) when `arch` cannot take this per-sample input shape (no batch
    dimension). Params are resolved first, so bad params raise under `params_field`."""
    entry, resolved = _resolve(arch, params, params_field, arch_field)
    _checked_shape(entry, arch, resolved, input_shape, field)


def build_model(
    arch: str,
    params: dict | None,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    field: str = "arch_params",
    input_field: str = "input_shape",
    arch_field: str | None = None,
) -> nn.Module:
    """Resolve and check, then build under the caller's torch RNG state (no reseeding here, so a
    seeded caller gets the same weights every time). The module carries `arch`, `arch_params`
    (resolved), `input_shape` and `num_classes`; it maps a float32 (N, *input_shape) batch to
    (N, num_classes) logits."""
    entry, resolved = _resolve(arch, params, field, arch_field)
    shape = _checked_shape(entry, arch, resolved, input_shape, input_field)
    if not _is_int(num_classes) or not 2 <= num_classes <= MAX_NUM_CLASSES:
        raise SpecError(
            f"must be an integer between 2 and {MAX_NUM_CLASSES}, got {num_classes!r}", field="num_classes"
        )
    model = entry.build(resolved, shape, num_classes)
    model.arch = arch
    model.arch_params = asdict(resolved)
    model.input_shape = shape
    model.num_classes = num_classes
    return model
