"""Teachers: three kinds of file behind one interface, `Teacher.logits(x, indices)`.

- `ModuleTeacher`: a safetensors state dict loaded into a registry architecture (strict keys and
  shapes), run in eval mode under no_grad.
- `OnnxTeacher`: any architecture exported to ONNX, run with onnxruntime.
- `LogitsTeacher`: logits precomputed by the user for the training set, looked up by sample index.

`load_teacher` picks the kind from the file's content; `inspect_teacher_file` validates an upload
without an architecture. Nothing here unpickles: safetensors headers are validated
(kdcore.formats) before the tensors are read, and .npz files are read with allow_pickle=False.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.errors import FormatError, KDError, TeacherError
from kdcore.onnx_sandbox import GraphLimits, GraphProcess
from kdcore.formats import (
    accepted_message,
    check_format,
    read_npz_headers,
    read_onnx_model,
    read_safetensors_header,
    safetensors_tensor_names,
)

CHUNK_SIZE = 4096  # samples per forward pass when a teacher labels a whole dataset
SHOWN = 5  # how many keys/shapes an error lists of each kind
FIELD = "teacher.path"
_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
_ONNX_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}


class Teacher(Protocol):
    num_classes: int
    input_shape: tuple[int, ...] | None  # None for precomputed logits
    deterministic: bool  # True: logits may be computed once per dataset and cached
    needs_indices: bool  # True for precomputed logits

    def logits(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        """float32 (N, num_classes) on x's device, without autograd history."""
        ...


# ---- a state dict in a registry architecture ----

class ModuleTeacher:
    """A torch module as teacher. It stays in eval() and runs under no_grad: dropout and
    batch-norm statistics must not change the targets, and no graph is needed through them."""

    deterministic = True
    needs_indices = False

    def __init__(self, module: nn.Module, *, input_shape: Sequence[int], num_classes: int,
                 device: str | torch.device = "cpu", chunk_size: int = CHUNK_SIZE):
        self.module = module.to(device).eval()
        self.module.requires_grad_(False)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.chunk_size = chunk_size

    @classmethod
    def from_safetensors(cls, path: str | os.PathLike, *, arch: str, arch_params: dict | None = None,
                         input_shape: Sequence[int], num_classes: int | None = None,
                         device: str | torch.device = "cpu") -> "ModuleTeacher":
        """Build `arch` and load the file's state dict into it. num_classes, when None, is read
        from the state dict (see `guess_num_classes`); the built module is then run once on a
        zero batch to confirm it yields (1, num_classes)."""
        from kdcore.models import build_model  # late: the API imports this module for inspection only

        header = read_safetensors_header(path)
        guessed_from = None
        if num_classes is None:
            guessed = guess_num_classes(header)
            if guessed is None:
                raise TeacherError("cannot tell the number of classes from the state dict (no 2-D "
                                   "'*weight' tensor); give num_classes", field=FIELD)
            num_classes, guessed_from = guessed
        module = build_model(arch, arch_params, input_shape=input_shape, num_classes=num_classes,
                             field="teacher.arch_params", arch_field="teacher.arch", input_field="input_shape")
        state = _load_safetensors(path)
        _check_finite(state, what="the teacher's weights")
        hint = (f" (num_classes = {num_classes} was read from {guessed_from!r}; give num_classes if that is wrong)"
                if guessed_from else "")
        load_state_dict_checked(module, state, what=f"architecture {arch!r}", hint=hint)
        teacher = cls(module, input_shape=input_shape, num_classes=num_classes, device=device)
        probe = teacher.logits(torch.zeros(1, *teacher.input_shape))
        if tuple(probe.shape) != (1, num_classes):
            raise TeacherError(f"the module gives logits of shape {list(probe.shape)} for one sample, "
                               f"expected [1, {num_classes}]{hint}", field=FIELD)
        return teacher

    def logits(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            parts = [self.module(chunk.to(self.device, torch.float32)).float()
                     for chunk in x.split(self.chunk_size)]
        out = torch.cat(parts) if parts else torch.empty(0, self.num_classes)
        _check_output(out, x.shape[0], self.num_classes)
        return out.to(x.device)


def load_state_dict_checked(module: nn.Module, state: Mapping[str, Tensor], *, what: str = "the architecture",
                            hint: str = "", field: str = FIELD, error: type[KDError] = TeacherError) -> None:
    """load_state_dict(strict=True), but first compare keys and shapes and raise `error` listing
    missing keys, unexpected keys and mismatched shapes (the first few of each)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{label} ({len(items)}): {', '.join(items[:SHOWN])}{', ...' if len(items) > SHOWN else ''}"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mismatched)) if items]
    if problems:
        raise error(f"the state dict does not fit {what}: {'; '.join(problems)}{hint}", field=field)
    module.load_state_dict(dict(state), strict=True)


def guess_num_classes(header: Mapping[str, Any]) -> tuple[int, str] | None:
    """Best effort, from a safetensors header: rows of the last 2-D tensor whose name ends in
    "weight", "last" in natural name order (net.10 after net.2), which for the usual
    Sequential/classifier naming is the output layer. Returns (num_classes, tensor name)."""
    candidates = [name for name in safetensors_tensor_names(header)
                  if name.endswith("weight") and len(header[name]["shape"]) == 2]
    if not candidates:
        return None
    name = max(candidates, key=_natural_key)
    return int(header[name]["shape"][0]), name


def _natural_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


# ---- an ONNX graph ----

class OnnxTeacher:
    """An ONNX graph with one float input (batch first) and one (batch, classes) output, run by
    onnxruntime on CPU (or CUDA when requested and available) in a child process with `limits`
    (kdcore/onnx_sandbox.py: a graph is a program, and never runs in the caller's process).
    `should_stop` is polled while the graph works: when it turns true the child is killed and
    `Stopped` raised. The graph is loaded from bytes, so it cannot reach files next to it.
    `close()` ends the child (it also ends with this object)."""

    needs_indices = False

    def __init__(self, path: str | os.PathLike, *, input_shape: Sequence[int] | None = None,
                 num_classes: int | None = None, device: str | torch.device = "cpu",
                 chunk_size: int = CHUNK_SIZE, require_num_classes: bool = True,
                 limits: GraphLimits = GraphLimits(), should_stop: Callable[[], bool] | None = None):
        model = read_onnx_model(path)
        self.deterministic = not any(node.op_type in _ONNX_RANDOM_OPS for node in model.graph.node)
        # Weights stored in the graph (what the service's compression ratio compares).
        self.parameters = sum(math.prod(init.dims) for init in model.graph.initializer)
        del model
        self.graph = GraphProcess(path, providers=_onnx_providers(device), limits=limits, should_stop=should_stop)
        try:
            self._describe(input_shape, num_classes, chunk_size, require_num_classes)
        except BaseException:
            self.graph.close()
            raise

    def _describe(self, input_shape, num_classes, chunk_size, require_num_classes) -> None:
        inputs, outputs = self.graph.inputs, self.graph.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise TeacherError(f"the ONNX graph must have one input and one output, it has inputs "
                               f"{[i['name'] for i in inputs]} and outputs {[o['name'] for o in outputs]}", field=FIELD)
        inp, out = inputs[0], outputs[0]
        if inp["type"] not in _ONNX_FLOAT_TYPES or out["type"] not in _ONNX_FLOAT_TYPES:
            raise TeacherError(f"the ONNX input and output must be float tensors, got {inp['type']} -> {out['type']}",
                               field=FIELD)
        self.input_dtype = _ONNX_FLOAT_TYPES[inp["type"]]
        self.onnx_input_shape = list(inp["shape"])
        self.onnx_output_shape = list(out["shape"])
        if len(self.onnx_input_shape) < 2:
            raise TeacherError(f"the ONNX input has shape {self.onnx_input_shape}; expected (batch, ...)",
                               field=FIELD)
        if len(self.onnx_output_shape) != 2:
            raise TeacherError(f"the ONNX output has shape {self.onnx_output_shape}; expected (batch, classes)",
                               field=FIELD)
        per_sample = self.onnx_input_shape[1:]
        if input_shape is not None:
            input_shape = tuple(int(d) for d in input_shape)
            if len(per_sample) != len(input_shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(per_sample, input_shape)):
                raise TeacherError(f"the ONNX graph takes input of shape {_show(self.onnx_input_shape)} "
                                   f"(samples of shape {_show(per_sample)}), but the data's samples have shape "
                                   f"{list(input_shape)}", field=FIELD)
            self.input_shape: tuple[int, ...] | None = input_shape
        else:
            fixed = all(isinstance(d, int) for d in per_sample)
            self.input_shape = tuple(per_sample) if fixed else None
        batch = self.onnx_input_shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None  # graphs exported without a dynamic batch
        self.chunk_size = self.fixed_batch or chunk_size

        classes = self.onnx_output_shape[1]
        if not isinstance(classes, int) and self.input_shape is not None:
            classes = self._run(np.zeros((1, *self.input_shape), dtype=np.float32)).shape[1]
        if isinstance(classes, int):
            if num_classes is not None and classes != num_classes:
                raise TeacherError(f"the ONNX graph outputs {_show(self.onnx_output_shape)}, i.e. {classes} "
                                   f"classes, but the data has {num_classes}", field=FIELD)
            self.num_classes = classes
        elif num_classes is not None or not require_num_classes:
            self.num_classes = num_classes  # None only for inspection (require_num_classes=False)
        else:
            raise TeacherError("cannot tell the number of classes of the ONNX graph; give num_classes", field=FIELD)

    def _run(self, x: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, x.shape[0], self.chunk_size):
            chunk = x[start:start + self.chunk_size].astype(self.input_dtype, copy=False)
            n = chunk.shape[0]
            if self.fixed_batch and n < self.fixed_batch:  # pad the last chunk to the graph's batch
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
            result = self.graph.run(chunk)
            if result.dtype.kind != "f" or result.ndim != 2 or result.shape[0] != chunk.shape[0]:
                raise TeacherError(f"the ONNX graph returned {result.dtype} values of shape {list(result.shape)} "
                                   f"for a batch of {chunk.shape[0]}; expected floats of shape (batch, classes)",
                                   field=FIELD)
            parts.append(result[:n])
        if not parts:
            return np.zeros((0, getattr(self, "num_classes", 0)), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def close(self) -> None:
        self.graph.close()

    def measure_latency(self, batch: np.ndarray) -> float:
        """Median seconds of one forward pass over `batch`, timed in the child (no pipe, no copies),
        so it compares with a student's `measure_latency` in this process."""
        if self.fixed_batch and batch.shape[0] != self.fixed_batch:
            batch = np.resize(batch, (self.fixed_batch, *batch.shape[1:]))
        return self.graph.time(batch.astype(self.input_dtype, copy=False))

    def __getstate__(self):
        raise TypeError("an ONNX teacher runs in its own process and cannot be copied or pickled")

    def logits(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        out = torch.from_numpy(self._run(x.detach().to("cpu", torch.float32).numpy()))
        _check_output(out, x.shape[0], self.num_classes)
        return out.to(x.device)


def _onnx_providers(device: str | torch.device) -> list:
    import onnxruntime as ort  # late: only ONNX teachers need it (it runs no graph here)

    device = torch.device(device)
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _dim(d: Any) -> int | str:
    return d if isinstance(d, int) else str(d)


def _show(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---- precomputed logits ----

class LogitsTeacher:
    """Logits the user computed for the training set: row i belongs to sample i of the training
    file as uploaded (before any validation split), so callers pass original sample indices."""

    deterministic = True
    needs_indices = True
    input_shape = None

    def __init__(self, logits: Tensor, *, num_samples: int | None = None, num_classes: int | None = None,
                 device: str | torch.device = "cpu"):
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
            raise TeacherError(f"logits must be a 2-D (samples, classes) array with at least 2 classes, "
                               f"got shape {list(logits.shape)}", field=FIELD)
        if not logits.is_floating_point():
            raise TeacherError(f"logits must be floats, got {logits.dtype}", field=FIELD)
        logits = logits.to(torch.float32)
        _check_finite({"logits": logits}, what="the logits")
        self._logits = logits.to(device)
        self.num_classes = int(logits.shape[1])
        self.check_against(num_samples, num_classes)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, num_samples: int | None = None,
                  num_classes: int | None = None, device: str | torch.device = "cpu") -> "LogitsTeacher":
        return cls(read_logits_file(path), num_samples=num_samples, num_classes=num_classes, device=device)

    @property
    def num_samples(self) -> int:
        return int(self._logits.shape[0])

    def check_against(self, num_samples: int | None, num_classes: int | None = None) -> None:
        """TeacherError unless there is one row per training sample (and num_classes columns)."""
        if num_samples is not None and num_samples != self.num_samples:
            raise TeacherError(f"the logits have {self.num_samples} rows but the training set has {num_samples} "
                               "samples; precomputed logits need one row per training sample, in order", field=FIELD)
        if num_classes is not None and num_classes != self.num_classes:
            raise TeacherError(f"the logits have {self.num_classes} classes but the data has {num_classes}",
                               field=FIELD)

    def logits(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        if indices is None:
            raise TeacherError("precomputed logits are looked up by sample index; pass indices", field=FIELD)
        indices = indices.to(self._logits.device, torch.int64)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            raise TeacherError(f"sample indices must lie in [0, {self.num_samples}), got "
                               f"[{int(indices.min())}, {int(indices.max())}]", field=FIELD)
        return self._logits[indices].to(x.device)


def read_logits_file(path: str | os.PathLike) -> Tensor:
    """The `logits` array of an .npz (allow_pickle=False) or the single `logits` tensor of a
    safetensors file, unvalidated beyond the container (LogitsTeacher checks the values)."""
    fmt = check_format(path, "teacher_logits")
    if fmt == "safetensors":
        header = read_safetensors_header(path)
        if not is_logits_header(header):
            raise FormatError(f"a safetensors file with tensors {safetensors_tensor_names(header)[:SHOWN]}, "
                              f"not one tensor 'logits'; {accepted_message('teacher_logits')}", field="file")
        return _load_safetensors(path)["logits"]
    try:  # sizes and dtypes from the headers first: nothing is decompressed for a bomb or a pickle
        headers = read_npz_headers(path)
    except FormatError as exc:
        raise TeacherError(exc.message, field=FIELD) from None
    if "logits" not in headers:
        raise TeacherError(f"the .npz has no array 'logits' (found: {', '.join(headers) or 'none'})", field=FIELD)
    if headers["logits"].dtype.kind != "f":
        raise TeacherError(f"array 'logits' has dtype {headers['logits'].dtype}; it must be floats", field=FIELD)
    try:
        with np.load(path, allow_pickle=False) as npz:
            array = npz["logits"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TeacherError(f"cannot read the .npz: {exc}", field=FIELD) from None
    return torch.from_numpy(np.ascontiguousarray(array))


def is_logits_header(header: Mapping[str, Any]) -> bool:
    return safetensors_tensor_names(header) == ["logits"]


# ---- choosing the kind ----

def load_teacher(path: str | os.PathLike, *, arch: str | None = None, arch_params: dict | None = None,
                 input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 num_samples: int | None = None, purpose: str = "teacher",
                 device: str | torch.device = "cpu", limits: GraphLimits = GraphLimits(),
                 should_stop: Callable[[], bool] | None = None) -> Teacher:
    """The teacher a file holds, by content: ONNX -> OnnxTeacher (run in a child process with
    `limits`, polling `should_stop`); .npz, or safetensors with one tensor `logits` ->
    LogitsTeacher (checked against num_samples when given); any other safetensors ->
    ModuleTeacher, which needs `arch` (and `input_shape`). Call `close_teacher` when done."""
    fmt = check_format(path, purpose)
    if fmt == "onnx":
        return OnnxTeacher(path, input_shape=input_shape, num_classes=num_classes, device=device, limits=limits,
                           should_stop=should_stop)
    if fmt == "npz":
        return LogitsTeacher.from_file(path, num_samples=num_samples, num_classes=num_classes, device=device)
    header = read_safetensors_header(path)
    if is_logits_header(header) or purpose == "teacher_logits":
        return LogitsTeacher.from_file(path, num_samples=num_samples, num_classes=num_classes, device=device)
    if arch is None:
        raise TeacherError("a safetensors state dict needs an architecture: give a registry architecture "
                           "name and its params (or upload an ONNX graph instead)", field="teacher.arch")
    if input_shape is None:
        raise TeacherError("the data's input shape is needed to build the architecture", field="teacher.arch")
    return ModuleTeacher.from_safetensors(path, arch=arch, arch_params=arch_params, input_shape=input_shape,
                                          num_classes=num_classes, device=device)


def close_teacher(teacher: Teacher) -> None:
    """End what a teacher holds outside this process (an ONNX teacher's child); others hold nothing."""
    close = getattr(teacher, "close", None)
    if close is not None:
        close()


def inspect_teacher_file(path: str | os.PathLike, *, purpose: str = "teacher",
                         limits: GraphLimits = GraphLimits()) -> dict[str, Any]:
    """Upload-time validation without an architecture. Returns format, kind ("state_dict", "onnx"
    or "logits"), parameters (total tensor elements, buffers included; ONNX: initializer
    elements), num_classes (state dict: best effort, see `guess_num_classes`), input_shape (ONNX
    only, per sample, None for a symbolic dim), num_samples (logits only) and tensors (count).
    Every floating tensor must be finite (TeacherError)."""
    fmt = check_format(path, purpose)
    if fmt == "npz" or (fmt == "safetensors" and
                        (purpose == "teacher_logits" or is_logits_header(read_safetensors_header(path)))):
        teacher = LogitsTeacher.from_file(path)
        return _report(fmt, "logits", None, teacher.num_classes, None, teacher.num_samples, 1)
    if fmt == "onnx":
        return _inspect_onnx(path, limits)
    header = read_safetensors_header(path)
    names = safetensors_tensor_names(header)
    if not names:
        raise TeacherError("the safetensors file holds no tensors", field=FIELD)
    _check_finite_file(path)
    guessed = guess_num_classes(header)
    parameters = sum(math.prod(header[n]["shape"]) for n in names)
    return _report(fmt, "state_dict", parameters, guessed[0] if guessed else None, None, None, len(names))


def _inspect_onnx(path: str | os.PathLike, limits: GraphLimits) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    # onnxruntime loads it (in a child with `limits`), so a graph it cannot run is refused at
    # upload, not in a job; one probe run tells a symbolic class count.
    teacher = OnnxTeacher(path, require_num_classes=False, limits=limits)
    teacher.close()
    model = read_onnx_model(path)
    parameters = 0
    for tensor in model.graph.initializer:
        parameters += math.prod(tensor.dims)
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            try:  # the values are in the file already: to_array can allocate no more than it holds
                values = numpy_helper.to_array(tensor)
            except Exception as exc:  # dims that do not match the stored data, among others
                raise TeacherError(f"tensor {tensor.name[:120]!r} cannot be read: {exc}", field=FIELD) from None
            if not np.isfinite(values).all():
                raise TeacherError(f"tensor {tensor.name[:120]!r} has non-finite values (NaN or Inf)", field=FIELD)

    per_sample = [d if isinstance(d, int) else None for d in teacher.onnx_input_shape[1:]]
    return _report("onnx", "onnx", parameters, teacher.num_classes, per_sample, None, len(model.graph.initializer))


def _report(fmt: str, kind: str, parameters: int | None, num_classes: int | None,
            input_shape: list | None, num_samples: int | None, tensors: int) -> dict[str, Any]:
    return {"format": fmt, "kind": kind, "parameters": parameters, "num_classes": num_classes,
            "input_shape": input_shape, "num_samples": num_samples, "tensors": tensors}


# ---- tensors from files ----

def _load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Only after read_safetensors_header passed (callers do that first)."""
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type
        raise FormatError(f"not a valid safetensors file: {exc}", field="file") from None


def _check_finite_file(path: str | os.PathLike) -> None:
    """Tensor by tensor, so at most one tensor is in memory at a time."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                _check_finite({name: tensor}, what="the state dict")
    except KDError:
        raise
    except Exception as exc:  # safetensors and torch raise their own types on a header they cannot map
        raise FormatError(f"not a valid safetensors file: {exc}", field="file") from None


def _check_finite(tensors: Mapping[str, Tensor], *, what: str) -> None:
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point():
            values = t.float() if t.element_size() == 1 else t  # float8 has no isfinite kernel
            count = int((~torch.isfinite(values)).sum())
            if count:
                bad.append(f"{name} ({count})")
    if bad:
        raise TeacherError(f"{what} hold non-finite values (NaN or Inf) in: {', '.join(bad[:SHOWN])}"
                           f"{', ...' if len(bad) > SHOWN else ''}", field=FIELD)


def _check_output(out: Tensor, n: int, num_classes: int) -> None:
    if tuple(out.shape) != (n, num_classes):
        raise TeacherError(f"the teacher returned logits of shape {list(out.shape)} for {n} samples, "
                           f"expected [{n}, {num_classes}]", field=FIELD)
    if not bool(torch.isfinite(out).all()):
        raise TeacherError("the teacher produced non-finite logits (NaN or Inf)", field=FIELD)
