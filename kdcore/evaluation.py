"""What the user judges the result by: accuracy, agreement with the teacher, KL to the teacher,
calibration, size, MACs and CPU latency.

Every metric returns a plain float (JSON-serialisable). Logits are (N, C), labels (N,) int.
Metrics are computed in float64 on CPU so that reported numbers do not depend on the device.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.models import count_params, estimate_macs

LogitsFn = Callable[[Tensor], Tensor]


def predict_logits(model_or_fn: nn.Module | LogitsFn, x: Tensor, *, batch_size: int = 1024,
                   device: str | torch.device | None = None) -> Tensor:
    """Logits for every row of `x`, batch by batch, as float32 on CPU. A module runs in eval mode
    (its own mode is restored afterwards) under no_grad; batches go to `device`, by default the
    module's own device (CPU for a plain callable, e.g. an onnxruntime teacher)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    is_module = isinstance(model_or_fn, nn.Module)
    if device is None:
        device = _device_of(model_or_fn) if is_module else torch.device("cpu")
    with _eval_mode(model_or_fn), torch.no_grad():
        starts = range(0, len(x), batch_size) if len(x) else [0]  # an empty x still yields (0, C)
        out = [model_or_fn(x[i : i + batch_size].to(device)).float().cpu() for i in starts]
    return torch.cat(out)


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose top-1 class is the label."""
    _check_logits(logits, y)
    return (logits.argmax(1).cpu() == y.cpu()).double().mean().item()


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of rows where student and teacher have the same top-1 class."""
    _check_pair(student_logits, teacher_logits)
    return (student_logits.argmax(1).cpu() == teacher_logits.argmax(1).cpu()).double().mean().item()


def mean_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> float:
    """KL(P_t ‖ Q_s) at `temperature`, summed over classes and averaged over rows, from log-softmax
    (never log(softmax)). No T² factor: this is a distance to report, not the training loss.
    0 exactly when the logits agree."""
    _check_pair(student_logits, teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(teacher_logits.detach().cpu().double() / temperature, dim=1)
    log_q = F.log_softmax(student_logits.detach().cpu().double() / temperature, dim=1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean").item()
    return max(kl, 0.0)  # ≥ 0 in exact arithmetic; rounding may leave -1e-17


def expected_calibration_error(logits: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """ECE over `n_bins` equal-width confidence bins (lo, hi]: Σ_b (n_b / N) · |acc_b − conf_b|,
    where confidence is the top-1 softmax probability (Guo et al., 2017)."""
    _check_logits(logits, y)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = F.softmax(logits.detach().cpu().double(), dim=1)
    confidence, predicted = probs.max(1)
    correct = (predicted == y.cpu()).double()
    inner_edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, inner_edges, right=False)  # bin b holds (edge_b, edge_b+1]
    count = torch.bincount(bins, minlength=n_bins).double()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    # Σ_b (n_b/N)|acc_b − conf_b| = Σ_b |Σ correct − Σ conf| / N; empty bins add 0.
    return ((correct_sum - conf_sum).abs().sum() / count.sum()).item()


def measure_latency(model: nn.Module | LogitsFn, input_shape: Sequence[int], *, batch_size: int = 64,
                    repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds for one forward pass over a (batch_size, *input_shape) float32
    batch on CPU, under inference_mode. Takes a module (run in eval mode on a CPU copy if it lives
    elsewhere; its own mode is restored) or any callable `fn(batch) -> Tensor`, such as an
    onnxruntime teacher. Thread settings are left as the process has them."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and batch_size >= 1")
    # Own generator: measuring must not advance the global RNG of a seeded run.
    batch = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
    fn = model
    if isinstance(model, nn.Module) and _device_of(model).type != "cpu":
        fn = copy.deepcopy(model).cpu()
    times = []
    with _eval_mode(fn), torch.inference_mode():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            fn(batch)
            elapsed = time.perf_counter() - started
            if i >= warmup:
                times.append(elapsed)
    return statistics.median(times)


@dataclass
class EvalReport:
    num_samples: int
    student_accuracy: float
    student_ece: float
    teacher_accuracy: float | None  # None when no teacher logits cover this split
    teacher_ece: float | None
    agreement: float | None  # top-1 agreement student vs teacher
    mean_kl: float | None  # KL(P_t ‖ Q_s) at T = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SizeReport:
    """Parameters, MACs per sample and median CPU seconds per batch of `latency_batch_size`."""
    student_parameters: int
    teacher_parameters: int | None
    compression_ratio: float | None  # teacher parameters / student parameters
    student_macs: int | None
    teacher_macs: int | None
    student_latency_s: float
    teacher_latency_s: float | None
    speedup: float | None  # teacher latency / student latency
    latency_batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(*, student: nn.Module | LogitsFn, teacher_logits: Tensor | None = None, x: Tensor, y: Tensor,
             teacher_model: nn.Module | LogitsFn | None = None, batch_size: int = 1024,
             device: str | torch.device | None = None, student_logits: Tensor | None = None) -> EvalReport:
    """Student and teacher on one labelled split. Teacher logits are
    used as given; without them they come from `teacher_model`; with neither (precomputed logits
    that do not cover this split) the teacher fields are None. `student_logits`, when given, are
    the student's predictions for `x` already made (the student is not run again)."""
    if student_logits is None:
        student_logits = predict_logits(student, x, batch_size=batch_size, device=device)
    student_logits = student_logits.detach().float().cpu()
    if teacher_logits is None and teacher_model is not None:
        teacher_logits = predict_logits(teacher_model, x, batch_size=batch_size)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.detach().float().cpu()
        _check_pair(student_logits, teacher_logits)
    has_teacher = teacher_logits is not None
    return EvalReport(
        num_samples=len(y),
        student_accuracy=accuracy(student_logits, y),
        student_ece=expected_calibration_error(student_logits, y),
        teacher_accuracy=accuracy(teacher_logits, y) if has_teacher else None,
        teacher_ece=expected_calibration_error(teacher_logits, y) if has_teacher else None,
        agreement=agreement(student_logits, teacher_logits) if has_teacher else None,
        mean_kl=mean_kl(teacher_logits, student_logits) if has_teacher else None,
    )


def size_report(student: nn.Module, teacher: nn.Module | LogitsFn | None = None, *,
                input_shape: Sequence[int], teacher_parameters: int | None = None,
                teacher_latency: float | None = None, batch_size: int = 64, repeats: int = 20,
                warmup: int = 3) -> SizeReport:
    """Parameters, MACs (per sample) and CPU latency (median seconds per batch of `batch_size`)
    of student and teacher, with compression = teacher params / student params and speedup =
    teacher latency / student latency. A teacher module is measured in full; a callable teacher
    (ONNX) is timed but has no parameter or MAC count unless `teacher_parameters` is given; no
    teacher leaves its fields None unless given explicitly. Explicit values win over measured ones."""
    shape = tuple(input_shape)
    timing = {"batch_size": batch_size, "repeats": repeats, "warmup": warmup}
    student_parameters = count_params(student)
    student_latency = measure_latency(student, shape, **timing)
    teacher_macs = None
    if isinstance(teacher, nn.Module):
        if teacher_parameters is None:
            teacher_parameters = count_params(teacher)
        teacher_macs = estimate_macs(teacher, shape)
    if teacher is not None and teacher_latency is None:
        teacher_latency = measure_latency(teacher, shape, **timing)
    return SizeReport(
        student_parameters=student_parameters,
        teacher_parameters=teacher_parameters,
        compression_ratio=None if not teacher_parameters else teacher_parameters / student_parameters,
        student_macs=estimate_macs(student, shape),
        teacher_macs=teacher_macs,
        student_latency_s=student_latency,
        teacher_latency_s=teacher_latency,
        speedup=None if teacher_latency is None else teacher_latency / student_latency,
        latency_batch_size=batch_size,
    )


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module | LogitsFn) -> Iterator[None]:
    """Eval mode for a module, every submodule's own mode restored afterwards (a caller may keep
    some frozen in eval). A plain callable passes through."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_logits(logits: Tensor, y: Tensor) -> None:
    if logits.ndim != 2 or y.ndim != 1 or len(logits) != len(y):
        raise ValueError(f"need logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError("no samples to evaluate")


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (N, C) logit tensors of the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) == 0:
        raise ValueError("no samples to evaluate")
