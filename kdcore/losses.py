"""The distillation objective (docs/KD_MATH.md): L = α·CE(z_s, y) + (1 − α)·T²·D(P_t ‖ Q_s).

Why T²: the gradient of the divergence between softmax(z_s/T) and softmax(z_t/T) with respect to
z_s is (Q − P)/T, and for large T that is ≈ (z_s − z_t)/(C·T²). Without the T² factor, raising T
would silently shrink the soft term's gradient and so re-weight α towards the hard labels; with it,
the two terms keep their relative scale whatever T the user picks.

Why float32: the soft term compares two log-distributions whose differences for unlikely classes
are tiny; in bf16/fp16 (8 or 11 mantissa bits) they round to zero or overflow in exp. Logits coming
out of an autocast forward are therefore upcast before any softmax, and every softmax is done as
log_softmax (never log(softmax(...)), which underflows to log 0 = −inf).

Unlabelled rows: a batch may mix labelled rows with rows that carry no label (UNLABELED = -1,
or an all-zero row of N×C target weights). The soft term is the mean over every row, the hard
term the mean over the labelled rows only:

    L = α · (1/|B_l|) Σ_{i ∈ B_l} CE(z_s,i, y_i)  +  (1 − α) · T² · (1/|B|) Σ_{i ∈ B} D(P_t,i ‖ Q_s,i)

and a batch with no labelled row has a hard term of 0 (so L = (1 − α)·T²·D). Each term keeps the
scale it has on fully labelled data, so α means the same thing whatever the share of labels.

The divergences live in the `LOSSES` registry under the names a job spec uses
(`hyperparameters.loss`). Each takes raw float32 student and teacher logits and the temperature and
returns the batch mean of the per-sample divergence, *unscaled*; `kd_loss` applies the T² factor
for the kinds that divide the logits by T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.registry import Registry

Divergence = Callable[[Tensor, Tensor, float], Tensor]

LOSSES: Registry[Divergence] = Registry("loss")

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.3
DEFAULT_KIND = "forward_kl"
UNLABELED = -1  # kdcore.data.UNLABELED (losses import nothing of the data layer)


@dataclass(frozen=True)
class LossTerms:
    """Scalar tensors. `total` carries the gradient; `hard` and `soft` are reported as metrics
    (`hard` is a 0 tensor when no labels were given)."""

    total: Tensor
    hard: Tensor
    soft: Tensor


def _divergence(name: str, *, temperature_scaled: bool = True) -> Callable[[Divergence], Divergence]:
    """Registers a divergence and records whether it works on z/T (and so needs the T² factor)."""

    def add(fn: Divergence) -> Divergence:
        fn.temperature_scaled = temperature_scaled  # type: ignore[attr-defined]
        return LOSSES.register(name)(fn)

    return add


def _log_probs(student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    return F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1)


@_divergence("forward_kl")
def forward_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(P_t ‖ Q_s), teacher first: mass-covering, the default (Hinton et al. 2015)."""
    log_q, log_p = _log_probs(student, teacher, temperature)
    # kl_div(input, target) = Σ target·(log target − input): the target is the first argument of KL.
    # "batchmean" sums over classes and divides by N only; "mean" would also divide by C.
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


@_divergence("reverse_kl")
def reverse_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(Q_s ‖ P_t): mode-seeking, the student may ignore classes the teacher finds plausible."""
    log_q, log_p = _log_probs(student, teacher, temperature)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


@_divergence("js")
def jensen_shannon(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """½·KL(P‖M) + ½·KL(Q‖M) with M = (P + Q)/2: symmetric and bounded by log 2.

    log M is taken as logsumexp(log P, log Q) − log 2 so that classes where both probabilities
    underflow stay finite instead of becoming log 0."""
    log_q, log_p = _log_probs(student, teacher, temperature)
    log_m = torch.logsumexp(torch.stack((log_p, log_q)), dim=0) - math.log(2.0)
    kl_pm = F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
    kl_qm = F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
    return 0.5 * (kl_pm + kl_qm)


@_divergence("mse_logits", temperature_scaled=False)
def mse_logits(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Batch mean of Σ_classes (z_s − z_t)² on the raw logits (logit matching, Ba & Caruana 2014).

    The temperature is not applied (it is accepted only to share the signature) and the value is
    NOT multiplied by T²: there is no softmax whose gradient T would shrink."""
    del temperature
    return (student - teacher).pow(2).sum(dim=-1).mean()


def hard_term(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy at T = 1 over the labelled rows; a 0 tensor when there are none.

    `labels` are N class indices (UNLABELED for a row without a label) or N×C target weights
    (mixup's mixed labels; an all-zero row has no label)."""
    student = student_logits.float()
    if labels.is_floating_point():
        if labels.shape != student.shape:
            raise ValueError(f"label weights must have shape {tuple(student.shape)}, got {tuple(labels.shape)}")
        labeled = labels.sum(dim=-1) > 0
        if not bool(labeled.any()):
            return student.new_zeros(())
        per_row = -(labels.float() * F.log_softmax(student, dim=-1)).sum(dim=-1)
        return per_row[labeled].mean()
    if labels.shape != student.shape[:1]:
        raise ValueError(f"labels must have shape ({student.shape[0]},), got {tuple(labels.shape)}")
    if not bool((labels != UNLABELED).any()):
        return student.new_zeros(())
    # ignore_index averages over the labelled rows only
    return F.cross_entropy(student, labels, ignore_index=UNLABELED)


def softmax_with_temperature(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / T) in float32 over the last dimension: flatter as T grows, uniform as T → ∞."""
    _check_temperature(temperature)
    return F.softmax(logits.float() / temperature, dim=-1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    kind: str = DEFAULT_KIND,
) -> LossTerms:
    """α·CE(z_s, y) + (1 − α)·soft, with soft = T²·D(z_s/T, z_t/T) (or the raw value for
    `mse_logits`). Inputs are N×C logits of any float dtype and labels as `hard_term` takes them
    (UNLABELED rows count in the soft term only, see the module docstring); the terms come back as
    float32 scalars. `labels` may be None only when α = 0 (pure distillation, e.g. on unlabelled
    data). An unknown `kind` raises SpecError naming the registered ones."""
    divergence = LOSSES.get(kind)
    _check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if student_logits.dim() != 2:
        raise ValueError(f"student logits must be N×C, got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits "
            f"{tuple(student_logits.shape)} must have the same N×C shape"
        )

    # Upcast before anything else: see the module docstring. The teacher is a fixed target.
    student = student_logits.float()
    teacher = teacher_logits.detach().float()

    if labels is None:
        if alpha != 0:
            raise ValueError(
                f"labels are required when alpha > 0 (alpha={alpha}); pass alpha=0 to distil without labels"
            )
        hard = student.new_zeros(())
    else:
        # The hard term is ordinary CE at T = 1 on the raw logits, not on z_s / T.
        hard = hard_term(student, labels)

    soft = divergence(student, teacher, temperature)
    if divergence.temperature_scaled:  # type: ignore[attr-defined]
        soft = temperature**2 * soft
    total = alpha * hard + (1.0 - alpha) * soft
    return LossTerms(total=total, hard=hard, soft=soft)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
