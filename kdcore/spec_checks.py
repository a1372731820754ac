"""Checks a spec against its files before anything runs: a spec that cannot run is refused when it
is submitted, not an hour into training (docs/KD_MATH.md: classes and input shape must agree).

These functions read headers and metadata only (no training data, no weights in memory): the API
calls them inside `POST /v1/jobs`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from kdcore.data import describe_builtin
from kdcore.errors import SpecError
from kdcore.formats import read_safetensors_header
from kdcore.models import build_model, check_input_shape, resolve_arch_params


# What one student may cost (issue 16: an mlp of 16 × 65,536 units was accepted and the worker then
# tried to allocate 17 GB). Parameters bound the weights, their gradients and the optimizer state
# (AdamW: about 16 bytes per parameter in all); activations are the outputs of every layer for one
# training batch, kept for the backward pass.
MAX_STUDENT_PARAMETERS = 100_000_000
MAX_ACTIVATION_BYTES = 8 * 1024**3


@dataclass(frozen=True)
class DataInfo:
    """What a job needs to know about its training data: per-sample shape, classes, rows."""

    input_shape: tuple[int, ...]
    num_classes: int
    num_samples: int


def builtin_info(name: str) -> DataInfo:
    """Shape, classes and training rows of a builtin dataset, from its registry entry (no generation)."""
    d = describe_builtin(name)
    return DataInfo(tuple(d["input_shape"]), d["num_classes"], d["num_samples"]["train"])


def check_student(arch: str, arch_params: dict | None, data: DataInfo,
                  batch_size: int | None = None) -> dict[str, Any]:
    """The student's resolved parameters; SpecError naming student.* when it cannot take the data,
    or when it is over MAX_STUDENT_PARAMETERS, or (with `batch_size`) its activations for one batch
    are over MAX_ACTIVATION_BYTES. Measured on the meta device: nothing is allocated."""
    params = resolve_arch_params(arch, arch_params, field="student.arch_params")
    check_input_shape(arch, params, data.input_shape, field="student.arch")
    num_classes = max(data.num_classes, 2)  # 0: no labelled row yet (the teacher decides later)
    with torch.device("meta"):
        model = build_model(arch, params, input_shape=data.input_shape, num_classes=num_classes)
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_STUDENT_PARAMETERS:
        raise SpecError(f"this student has {count:,} parameters, over the limit of {MAX_STUDENT_PARAMETERS:,} "
                        "(MAX_STUDENT_PARAMETERS)", field="student.arch_params")
    if batch_size is not None:
        activations = activation_bytes(model, data.input_shape, batch_size)
        if activations > MAX_ACTIVATION_BYTES:
            raise SpecError(f"this student's activations for one batch of {batch_size} are about "
                            f"{activations / 1024**3:.1f} GiB, over the limit of {MAX_ACTIVATION_BYTES / 1024**3:g} GiB "
                            "(MAX_ACTIVATION_BYTES); lower hyperparameters.batch_size or the student's size",
                            field="student.arch_params")
    return params


def check_student_accepted(arch: str, arch_params: dict | None, data: DataInfo,
                           batch_size: int | None = None) -> dict[str, Any]:
    """`check_student`, remembered for the students it accepted (`remembered`): it builds the student on
    the meta device and runs a batch through it, about 2.6 ms of a tiny job's CPU (bench/RESULTS.md B6)
    and a fifth of a submission's (B4). The limits it checks against are part of the key."""
    key = ("student", arch, json.dumps(arch_params, sort_keys=True), data, batch_size, MAX_STUDENT_PARAMETERS,
           MAX_ACTIVATION_BYTES)
    return remembered(key, lambda: check_student(arch, arch_params, data, batch_size=batch_size))


def remembered(key: tuple, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`check()`'s result (resolved parameters), kept under `key` once it has passed: for checks that are
    pure functions of their key. A refusal is not kept (it raises anew); each call gets its own copy.
    At most _ACCEPTED_MAX entries, the oldest dropped."""
    with _accepted_lock:
        text = _accepted.get(key)
    if text is None:
        text = json.dumps(check())
        with _accepted_lock:
            if len(_accepted) >= _ACCEPTED_MAX:
                _accepted.pop(next(iter(_accepted)))
            _accepted[key] = text
    return json.loads(text)


_ACCEPTED_MAX = 256
_accepted: dict[tuple, str] = {}
_accepted_lock = threading.Lock()


def activation_bytes(model: torch.nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    """float32 bytes of every leaf module's output for one batch: what the backward pass keeps.
    `model` may live on the meta device (shapes only)."""
    total = 0

    def add(module, inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(add) for m in leaves]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.empty((batch_size, *input_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def check_state_dict_teacher(path: str, arch: str | None, arch_params: dict | None,
                             data: DataInfo) -> dict[str, Any]:
    """A safetensors state dict against its declared architecture, by the file's header alone:
    the architecture is built on the meta device (no memory) and keys and shapes compared."""
    if arch is None:
        raise SpecError("a safetensors state-dict teacher needs its architecture", field="teacher.arch")
    params = resolve_arch_params(arch, arch_params, field="teacher.arch_params")
    check_input_shape(arch, params, data.input_shape, field="teacher.arch")
    parts = _header_mismatches(path, arch, params, data)
    if parts:
        raise SpecError(f"the teacher file does not match {arch} {params} with input shape "
                        f"{list(data.input_shape)} and {data.num_classes} classes: " + "; ".join(parts),
                        field="teacher.arch_params")
    return params


def _header_mismatches(path: str, arch: str, params: dict, data: DataInfo) -> list[str]:
    """How a safetensors file's header differs from `arch` built for the data on the meta device
    (no memory, nothing but the header read); empty when it fits."""
    with torch.device("meta"):
        model = build_model(arch, params, input_shape=data.input_shape, num_classes=data.num_classes)
    return state_dict_mismatches(state_dict_shapes(model), header_shapes(path), arch)


def check_student_init(path: str, arch: str, arch_params: dict | None, data: DataInfo, *,
                       field: str = "student.init_path") -> None:
    """Initial student weights (`student.init_path`) against the student they are loaded into, by
    the file's safetensors header alone (keys and shapes; nothing but the header is read): the
    check `run_distillation` makes before it loads them, done when the job is submitted. With no
    class count known yet (`data.num_classes` 0: no labelled row and a teacher that does not say),
    the output layer cannot be sized, so only the worker checks it. SpecError naming `field`."""
    if data.num_classes <= 0:
        return
    params = resolve_arch_params(arch, arch_params, field="student.arch_params")
    parts = _header_mismatches(path, arch, params, data)
    if parts:
        raise SpecError(f"the initial weights do not fit the student {arch} {params} with input shape "
                        f"{list(data.input_shape)} and {data.num_classes} classes: " + "; ".join(parts),
                        field=field)


def state_dict_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a module's state dict (a module on the meta device will do)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def header_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's validated header (no tensor data is read)."""
    return {k: tuple(v["shape"]) for k, v in read_safetensors_header(path).items() if k != "__metadata__"}


def state_dict_mismatches(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                          arch: str) -> list[str]:
    """What keeps a file's tensors (`found`) from loading strictly into a model (`expected`), as
    readable parts: missing keys, unexpected keys, shape mismatches (the first 5 of each); [] when
    they fit. Used at submission (headers) and by the pipeline before it loads initial weights."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {list(found[k])}, {arch} {list(expected[k])}"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:5]}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:5]}")
    if wrong:
        parts.append(f"shape mismatches {wrong[:5]}")
    return parts


def check_teacher_info(info: dict[str, Any], data: DataInfo) -> None:
    """An ONNX or precomputed-logits teacher (as described by inspect_teacher_file) against the data."""
    classes = info.get("num_classes")
    if classes is not None and classes != data.num_classes:
        raise SpecError(f"the teacher predicts {classes} classes but the dataset has {data.num_classes}",
                        field="teacher.file_id")
    shape = info.get("input_shape")
    if info.get("kind") == "onnx" and shape is not None:
        declared = list(shape)
        actual = list(data.input_shape)
        fits = len(declared) == len(actual) and all(
            not isinstance(d, int) or d <= 0 or d == a for d, a in zip(declared, actual))
        if not fits:
            raise SpecError(f"the ONNX teacher takes inputs of shape {declared} per sample but the dataset's "
                            f"samples have shape {actual}", field="teacher.file_id")
    if info.get("kind") == "logits" and info.get("num_samples") not in (None, data.num_samples):
        raise SpecError(f"the precomputed logits have {info['num_samples']} rows but the training set has "
                        f"{data.num_samples}", field="teacher.file_id")
