"""How sure the verdict is, and what makes a result suspect.

The distilled student and the baseline are scored on the same evaluation rows, so their
accuracies are paired: `paired_comparison` counts the rows where exactly one of them is right and
tests them with McNemar's exact test (the binomial test on the discordant rows, no scipy needed).
`quality_warnings` flags a run whose accuracy is near chance or whose training loss ran away.

Pure Python over plain numbers (the pipeline passes boolean tensors of correctness and the
per-epoch metrics it already has); the comparison is a `kdcore.results.Comparison`, the warnings
JSON-serialisable dicts.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterable, Sequence

import torch

from kdcore.results import Comparison

ALPHA = 0.05  # significance level of the verdict: p < ALPHA is "better"/"worse"
BETTER, WORSE, NOT_DISTINGUISHABLE = "better", "worse", "not distinguishable"
# Near chance: an accuracy below 1/classes + CHANCE_MARGIN (5 percentage points above guessing
# uniformly, or below it).
CHANCE_MARGIN = 0.05
# Up to this many discordant rows the p-value is summed in exact integer arithmetic; above it in
# log space (lgamma), which agrees to about 1e-12 relative and costs no big integers.
EXACT_MAX_ROWS = 20_000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided p-value of McNemar's exact test for `b` rows only the first model gets right and `c`
    rows only the second does.

    Under the null hypothesis (both models equally accurate on this population) each of the
    n = b + c discordant rows goes either way with probability 1/2, so min(b, c) is the lower tail of
    Binomial(n, 1/2): p = min(1, 2 · Σ_{i ≤ min(b, c)} C(n, i) / 2^n). No discordant row: p = 1.
    Hand-computed: (0, 6) → 2/64 = 0.03125; (1, 9) → 2·11/1024 = 0.021484375; (b, b) → 1."""
    if isinstance(b, bool) or isinstance(c, bool) or int(b) != b or int(c) != c or b < 0 or c < 0:
        raise ValueError(f"need two counts >= 0, got {b!r} and {c!r}")
    b, c = int(b), int(c)
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    if 2 * k >= n:  # the tail holds at least half the mass: p = 1 after doubling
        return 1.0
    if n <= EXACT_MAX_ROWS:
        term = total = 1  # C(n, 0)
        for i in range(k):
            term = term * (n - i) // (i + 1)  # C(n, i + 1), exact
            total += term
        return min(1.0, float(Fraction(total, 1 << (n - 1))))
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    log_tail = top + math.log(math.fsum(math.exp(v - top) for v in logs)) - (n - 1) * math.log(2)
    return min(1.0, math.exp(log_tail))


def paired_comparison(student_correct: torch.Tensor, baseline_correct: torch.Tensor, *,
                      alpha: float = ALPHA) -> Comparison:
    """The student against the baseline on the same rows (two boolean vectors, True where the model
    is right): the discordant counts, McNemar's exact p-value and the verdict at `alpha`:
    "better" or "worse" when p < alpha, else "not distinguishable"."""
    s = torch.as_tensor(student_correct).bool().flatten().cpu()
    base = torch.as_tensor(baseline_correct).bool().flatten().cpu()
    if s.shape != base.shape:
        raise ValueError(f"need one value per row for both models, got {tuple(s.shape)} and {tuple(base.shape)}")
    b, c = int((s & ~base).sum()), int((~s & base).sum())
    p = mcnemar_exact(b, c)
    verdict = NOT_DISTINGUISHABLE if p >= alpha else (BETTER if b > c else WORSE)
    return Comparison(test="mcnemar_exact", alpha=alpha, rows=int(s.numel()), student_only_right=b,
                      baseline_only_right=c, p_value=p, verdict=verdict)


def near_chance(accuracy: float | None, num_classes: int) -> bool:
    """Accuracy below 1/num_classes + CHANCE_MARGIN (None: not scored, so not flagged)."""
    return accuracy is not None and num_classes >= 2 and accuracy < 1.0 / num_classes + CHANCE_MARGIN


def diverged(losses: Sequence[float]) -> bool:
    """A run's per-epoch training losses ran away: its last epoch gave back more than half of the
    improvement from its first epoch to its best one (last > best + (first − best) / 2), which
    includes ending above where it started. Needs two epochs; a loss that never moved is not flagged."""
    values = [float(v) for v in losses]
    if len(values) < 2:
        return False
    first, best, last = values[0], min(values), values[-1]
    return last > best + (first - best) / 2


def quality_warnings(*, accuracies: dict[str, float | None], evaluated_on: str, num_classes: int,
                     losses: dict[str, Iterable[float]]) -> list[dict[str, Any]]:
    """What makes the result suspect, as {"code", "model", "message", ...} items:
    `near_chance` for the student (and the teacher) scoring near chance (`accuracies` maps
    "student"/"teacher" to its accuracy on the `evaluated_on` split), `diverged` for a run (`losses`
    maps "student"/"baseline" to its per-epoch training losses) whose loss ran away."""
    out: list[dict[str, Any]] = []
    chance = 1.0 / num_classes if num_classes >= 2 else None
    split = evaluated_on or "evaluation"
    for model, hint in (("student", "check the learning rate, the number of epochs and the teacher"),
                        ("teacher", "check that it is the right teacher for this data (classes in the same "
                                    "order, inputs as it was trained on)")):
        acc = accuracies.get(model)
        if chance is not None and near_chance(acc, num_classes):
            out.append({"code": "near_chance", "model": model, "accuracy": acc, "chance": chance,
                        "message": f"the {model}'s accuracy on the {split} split, {100 * acc:.1f} %, is near "
                                   f"chance ({100 * chance:.1f} % for {num_classes} classes; flagged below "
                                   f"chance + {100 * CHANCE_MARGIN:g} points): {hint}"})
    for run, values in losses.items():
        values = [float(v) for v in values]
        if diverged(values):
            out.append({"code": "diverged", "model": run, "first_loss": values[0], "best_loss": min(values),
                        "last_loss": values[-1],
                        "message": f"the {run}'s training loss diverged: {values[-1]:.4g} in its last epoch "
                                   f"against {min(values):.4g} at its best and {values[0]:.4g} in its first; "
                                   "lower the learning rate or set grad_clip_norm"})
    return out
