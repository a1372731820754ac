"""The student as a self-describing artifact, and its ONNX export.

`save_student` writes a safetensors file whose string metadata says how to rebuild the module:

    format        "kdcore.student/v1"
    arch          registry name, e.g. "mlp"
    arch_params   JSON, the resolved params (every default filled in)
    input_shape   JSON list, per sample (no batch dimension)
    num_classes   JSON int
    parameters    JSON int, count_params(model)
    <key>         JSON, one per entry of the caller's `metadata` ("metrics", "job_id", "spec", ...)

so `load_student` needs the file alone. Every value except `format` and `arch` is JSON.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from kdcore.checkpoint import atomic_write
from kdcore.data import Standardizer
from kdcore.errors import FormatError, KDError
from kdcore.models import build_model, count_params

FORMAT = "kdcore.student/v1"
_PLAIN_KEYS = ("format", "arch")  # stored as bare strings; everything else is JSON
_RESERVED = ("format", "arch", "arch_params", "input_shape", "num_classes", "parameters")
ONNX_TOLERANCE = 1e-4
# Exported graphs kept per process, by what determines them (`_graph_key`): a worker exports the
# same student architecture job after job, and tracing it again is most of the export's cost (the
# B6 student: 6.7-9.4 ms of CPU fresh, 1.9-2.6 ms reusing the graph, OMP_NUM_THREADS=1).
# Each entry is the graph without its weights plus the state_dict key of every initializer, or
# None when the graph is not reusable (an initializer the exporter computed, e.g. conv-BN fusion).
GRAPH_CACHE_SIZE = 32
_graphs: OrderedDict[tuple, tuple[Any, list[str]] | None] = OrderedDict()
_graphs_lock = threading.Lock()


def save_student(path: Path, model: nn.Module, *, metadata: dict[str, Any] | None = None) -> str:
    """Write `model` (built by `build_model`) with its description; returns the file's sha256 hex.
    Written atomically: readers see the previous file or the complete new one."""
    for attr in ("arch", "arch_params", "input_shape", "num_classes"):
        if not hasattr(model, attr):
            raise ValueError(f"the model has no {attr!r} attribute; build it with kdcore.models.build_model")
    header = {
        "format": FORMAT,
        "arch": str(model.arch),
        "arch_params": _to_json(model.arch_params, "arch_params"),
        "input_shape": _to_json(list(model.input_shape), "input_shape"),
        "num_classes": _to_json(int(model.num_classes), "num_classes"),
        "parameters": _to_json(count_params(model), "parameters"),
    }
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or key in _RESERVED:
            raise ValueError(f"metadata key {key!r} is reserved or not a string; reserved: {', '.join(_RESERVED)}")
        header[key] = _to_json(value, key)

    data = safetensors_bytes(_plain_state_dict(model), metadata=header)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def read_student_metadata(path: Path) -> dict[str, Any]:
    """The decoded metadata of a student file (reads the header only). FormatError when the file is
    not safetensors or was not written by `save_student`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except SafetensorError as exc:  # OSError (missing file, permissions) propagates as it is
        raise FormatError(f"{path.name} is not a safetensors file ({exc})", field="file") from None
    if raw.get("format") != FORMAT:
        found = f"format {raw['format']!r}" if "format" in raw else "no kdcore metadata"
        raise FormatError(
            f"{path.name} is not a kdcore student file ({found}; expected format {FORMAT!r}); a plain "
            "safetensors state dict needs its architecture given separately",
            field="file",
        )
    missing = [key for key in _RESERVED if key not in raw]
    if missing:
        raise FormatError(f"{path.name}: student metadata lacks {', '.join(missing)}", field="file")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _PLAIN_KEYS:
            meta[key] = value
            continue
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            raise FormatError(f"{path.name}: metadata {key!r} is not valid JSON", field="file") from None
    return meta


def load_student(path: Path, *, device: str | torch.device = "cpu", raw_inputs: bool = True) -> nn.Module:
    """Rebuild the module from the file alone (architecture from the metadata, weights loaded
    strictly), in eval mode on `device`. A student trained behind `dataset.standardize` comes back
    taking raw inputs, as its ONNX file does: its standardizer (from the metadata) is the module's
    first step. `raw_inputs=False` gives the bare network, which expects standardised inputs."""
    meta = read_student_metadata(path)
    model = build_model(
        meta["arch"], meta["arch_params"], input_shape=tuple(meta["input_shape"]), num_classes=meta["num_classes"]
    )
    try:
        model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{Path(path).name}: weights do not fit architecture {meta['arch']!r}: {exc}",
                          field="file") from None
    if raw_inputs and meta.get("standardizer") is not None:
        scaler = Standardizer.from_state_dict(meta["standardizer"])
        model = _RawInputs(model, scaler.mean, scaler.std)
    return model.to(device).eval()


class _RawInputs(nn.Module):
    """The student behind the input standardisation it was trained with: takes the inputs as the
    user's files hold them, so the exported graph needs no preprocessing outside it."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.input_shape, self.num_classes = getattr(model, "input_shape", None), getattr(model, "num_classes", None)
        self.register_buffer("mean", mean.detach().float().cpu().clone())
        self.register_buffer("std", std.detach().float().cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def export_onnx(model: nn.Module, path: Path, *, opset: int = 17,
                input_shape: tuple[int, ...] | None = None, standardizer: Any = None,
                metadata: dict[str, Any] | None = None) -> None:
    """Export to ONNX (input "input", output "logits", dynamic batch axis) and check with
    onnxruntime that it reproduces PyTorch within 1e-4 on a random batch before writing `path`.
    `input_shape` (per sample) defaults to `model.input_shape`. The caller's model is untouched:
    a CPU copy in eval mode is exported.

    The graph is self-contained: with a `standardizer` (kdcore.data.Standardizer, the one the
    student was trained behind) its (x − mean) / std is the graph's first step, so the ONNX file
    takes raw inputs. `metadata` (plus input_shape, num_classes and what the input expects) goes
    into the model's `metadata_props`, each value a string (JSON for everything not a string).

    The traced graph is reused within the process for the next export of the same architecture,
    input shape, opset and standardizer presence, with this model's weights put in place of its
    initializers (graphs whose initializers are all the module's own tensors, unchanged); the
    onnxruntime check runs on every export, and a reused graph that fails it is traced afresh
    (and, if the fresh one passes, not reused again)."""
    import onnx  # late: only the export needs it

    shape = tuple(input_shape if input_shape is not None else model.input_shape)
    module = copy.deepcopy(model).cpu().eval()
    if standardizer is not None:
        module = _RawInputs(module, standardizer.mean, standardizer.std).eval()
    # Own generator: exporting must not advance the global RNG of a seeded run.
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((2, *shape), generator=generator)
    check = torch.randn((3, *shape), generator=generator)  # another batch size: exercises the dynamic axis

    state = module.state_dict()
    key = _graph_key(model, module, shape, opset, state)
    with _graphs_lock:
        known, cached = key in _graphs, _graphs.get(key)
        if known:
            _graphs.move_to_end(key)
    if cached is not None:
        proto = _with_weights(*cached, state)
        try:
            onnx_out, torch_out = _check_outputs(proto.SerializeToString(), module, check)
        except Exception:  # onnxruntime refused the graph: as for a mismatch, trace afresh
            onnx_out = torch_out = None
        if onnx_out is not None and _reproduces(onnx_out, torch_out):
            _write(proto, path, shape, onnx_out, standardizer, metadata)
            return
        with _graphs_lock:
            _graphs.pop(key, None)

    data = _trace(model, module, example, opset)
    onnx_out, torch_out = _check_outputs(data, module, check)
    if not _reproduces(onnx_out, torch_out):  # e.g. NaN weights: the entry (if any) is gone, retraced next time
        same_shape = onnx_out.shape == torch_out.shape
        diff = float(np.abs(onnx_out - torch_out).max()) if same_shape else float("nan")
        raise KDError(f"the ONNX export does not reproduce PyTorch (max abs difference {diff:.3g}, "
                      f"shapes {onnx_out.shape} vs {torch_out.shape}); nothing was written")
    proto = onnx.load_from_string(data)
    if cached is not None or not known:
        # A reused graph failed where a fresh trace of the same module passes: the key misses
        # something the graph depends on, so this key is traced every time from now on.
        entry = None if cached is not None else _reusable(proto, state)
        with _graphs_lock:
            _graphs[key] = entry
            _graphs.move_to_end(key)
            while len(_graphs) > GRAPH_CACHE_SIZE:
                _graphs.popitem(last=False)
    _write(proto, path, shape, onnx_out, standardizer, metadata)


def _trace(model: nn.Module, module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter is chosen on purpose (onnxscript is not installed) and
        # announces its deprecation; tracer warnings are covered by the onnxruntime check.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as exc:  # e.g. an operator ONNX cannot express at this opset
            reason = str(exc).split("[Caused by", 1)[0].strip()
            raise KDError(f"ONNX export of {type(model).__name__} failed: {reason}") from exc
    return buffer.getvalue()


def _check_outputs(data: bytes, module: nn.Module, check: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    # One thread: the check runs 3 rows, and starting onnxruntime's default pool (a thread per core)
    # cost more than the whole check (5.7 ms against 0.7 ms for a tiny MLP; bench/RESULTS.md, B6).
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["logits"], {"input": check.numpy()})
    with torch.no_grad():
        torch_out = module(check).numpy()
    return onnx_out, torch_out


def _reproduces(onnx_out: np.ndarray, torch_out: np.ndarray) -> bool:
    return onnx_out.shape == torch_out.shape and bool(
        np.allclose(onnx_out, torch_out, atol=ONNX_TOLERANCE, rtol=ONNX_TOLERANCE))


def _write(proto: Any, path: Path, shape: tuple[int, ...], onnx_out: np.ndarray, standardizer: Any,
           metadata: dict[str, Any] | None) -> None:
    props = {"format": "kdcore.student.onnx/v1", "input_shape": list(shape),
             "num_classes": int(onnx_out.shape[-1]),
             "input": ("raw features as in the training file: the graph standardises them itself"
                       if standardizer is not None else "features as in the training file (no preprocessing)"),
             **(metadata or {})}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else _to_json(value, key)
    with atomic_write(Path(path)) as f:
        f.write(proto.SerializeToString())


def _graph_key(model: nn.Module, module: nn.Module, shape: tuple[int, ...], opset: int,
               state: dict[str, torch.Tensor]) -> tuple:
    """What the traced graph depends on: the module's structure (its repr has every layer's sizes;
    arch_params what a registry model was built from), the input, and the weights' names and kinds."""
    arch_params = json.dumps(getattr(model, "arch_params", None), sort_keys=True, default=str)
    return (type(model), type(module), repr(module), arch_params, shape, opset,
            tuple((name, tuple(t.shape), t.dtype) for name, t in state.items()))


def _reusable(proto: Any, state: dict[str, torch.Tensor]) -> tuple[Any, list[str]] | None:
    """The graph without its weights and the state_dict key of each initializer, when every
    initializer is a state_dict entry as it is (same name, shape, dtype and values); else None."""
    from onnx import ModelProto, numpy_helper

    names = []
    for init in proto.graph.initializer:
        tensor = state.get(init.name)
        if tensor is None:
            return None
        try:
            ours = tensor.detach().cpu().numpy()
        except TypeError:  # a dtype numpy has no form for (bfloat16)
            return None
        theirs = numpy_helper.to_array(init)
        if ours.dtype != theirs.dtype or ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            return None
        names.append(init.name)
    skeleton = ModelProto()
    skeleton.CopyFrom(proto)
    del skeleton.graph.initializer[:]
    return skeleton, names


def _with_weights(skeleton: Any, names: list[str], state: dict[str, torch.Tensor]) -> Any:
    from onnx import ModelProto, numpy_helper

    proto = ModelProto()
    proto.CopyFrom(skeleton)
    proto.graph.initializer.extend(
        numpy_helper.from_array(state[name].detach().cpu().numpy(), name) for name in names)
    return proto


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage). A tensor
    whose storage was already seen (tied weights) is stored as its own copy: `load_student`
    rebuilds the module, whose constructor ties it again, and a strict load fills both names."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or not t.is_contiguous() or storage.nbytes() != t.nbytes:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _to_json(value: Any, key: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata {key!r} is not JSON-serialisable: {exc}") from None


def _json_default(value: Any) -> Any:
    # Tensors and numpy values (e.g. a standardizer's mean and std) become lists and numbers.
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
