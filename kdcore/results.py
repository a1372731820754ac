"""What a distillation returns: `DistillResult`, typed, serialised once at the boundary.

`run_distillation` builds one; `to_dict()` is the JSON the service stores as a job's `result` and
kdcore writes as summary.json (the shape is the public contract: the API's schema for `result` is
derived from these classes). Every figure is on the evaluation split (`evaluated_on`: the test split
when one is given, else validation); accuracies are None when no evaluation row is labelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kdcore.trainer import TrainResult


def _f(default: Any = None, *, help: str, factory: Any = None) -> Any:
    """A result field with its one line of help (the API's schema shows it)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainRows:
    labeled: int = _f(0, help="training rows with a label")
    unlabeled: int = _f(0, help="training rows without one (the teacher alone supervises them)")


@dataclass
class RunRecord:
    """One training run: its length and best epoch."""
    epochs_run: int | None = _f(help="epochs trained in all (those before a resume too)")
    steps: int | None = _f(help="optimizer steps taken in all")
    best_epoch: int | None = _f(help="1-based epoch with the best validation score")
    stopped_early: bool | None = _f(help="early stopping ended the run before hyperparameters.epochs")
    restored_best: bool | None = _f(help="the model ends with the best epoch's weights")
    train_rows: TrainRows | None = _f(help="the rows it trained on")

    def record_run(self, run: TrainResult, *, labeled: int, unlabeled: int) -> None:
        self.epochs_run, self.steps, self.best_epoch = run.epochs_completed, run.steps, run.best_epoch
        self.stopped_early, self.restored_best = run.stopped_early, run.restored_best
        self.train_rows = TrainRows(labeled=labeled, unlabeled=unlabeled)


@dataclass
class Scores:
    accuracy: float | None = _f(help="top-1 accuracy on the labelled evaluation rows")
    ece: float | None = _f(help="expected calibration error (15 bins) on the labelled evaluation rows")


@dataclass
class TeacherReport(Scores):
    val_accuracy: float | None = _f(help="top-1 accuracy on the labelled validation rows, the split the training "
                                         "curves are on (None without teacher logits for them)")
    parameters: int | None = _f(help="parameter count (None for an ONNX teacher or precomputed logits)")
    macs: int | None = _f(help="multiply-accumulates per sample (None unless the teacher is a module)")
    latency_ms: float | None = _f(help="median CPU milliseconds per batch of 64")


@dataclass
class ModelReport(RunRecord, Scores):
    """A trained model (the distilled student, or the baseline trained without the teacher)."""
    agreement: float | None = _f(help="top-1 agreement with the teacher on every evaluation row")
    mean_kl: float | None = _f(help="mean KL(teacher ‖ model) at T = 1 on every evaluation row")


@dataclass
class StudentReport(ModelReport):
    arch: str = _f("", help="the student's architecture")
    arch_params: dict[str, Any] = _f(help="its parameters, defaults filled in", factory=dict)
    parameters: int = _f(0, help="parameter count")
    macs: int | None = _f(help="multiply-accumulates per sample")
    latency_ms: float = _f(0.0, help="median CPU milliseconds per batch of 64")
    sha256: str | None = _f(help="of student.safetensors")
    size_bytes: int | None = _f(help="of student.safetensors")


@dataclass
class Comparison:
    """Student against baseline on the same labelled rows (kdcore/verdict.py)."""
    test: str = _f("mcnemar_exact", help="the paired test: McNemar's exact test on the discordant rows")
    alpha: float = _f(0.05, help="significance level of the verdict")
    rows: int = _f(0, help="labelled evaluation rows both models were scored on")
    student_only_right: int = _f(0, help="rows the student gets right and the baseline wrong")
    baseline_only_right: int = _f(0, help="rows the baseline gets right and the student wrong")
    p_value: float = _f(1.0, help="two-sided exact p-value")
    verdict: str = _f("not distinguishable", help="better, worse or not distinguishable (p >= alpha)")


@dataclass
class SweepEpoch:
    epoch: int = _f(0, help="1-based epoch")
    train_loss: float = _f(0.0, help="mean training loss")
    val_accuracy: float | None = _f(help="validation accuracy (None without labelled validation rows)")
    val_agreement: float | None = _f(help="validation agreement with the teacher")


@dataclass
class SweepPoint:
    temperature: float = _f(0.0, help="T of this point")
    alpha: float = _f(0.0, help="alpha of this point")
    val_accuracy: float | None = _f(help="validation accuracy of the weights the point ends with")
    val_agreement: float | None = _f(help="validation agreement with the teacher")
    epochs_run: int = _f(0, help="epochs trained")
    best_epoch: int | None = _f(help="1-based epoch with the best validation score")
    stopped_early: bool = _f(False, help="early stopping ended the point's run")
    history: list[SweepEpoch] = _f(help="per-epoch figures", factory=list)


@dataclass
class SweepChoice:
    temperature: float = _f(0.0, help="T of the chosen point")
    alpha: float = _f(0.0, help="alpha of the chosen point")
    index: int = _f(0, help="its position in points (grid order)")


@dataclass
class Sweep:
    points: list[SweepPoint] = _f(help="every (T, alpha) point, grid order", factory=list)
    best: SweepChoice = _f(help="the point chosen by validation accuracy, then agreement", factory=SweepChoice)


@dataclass
class Spread:
    """One figure over the repeats, in seed order."""
    values: list[float | None] = _f(help="one per seed, in the order of repeats.seeds", factory=list)
    mean: float | None = _f(help="their mean (None when a value is missing)")
    std: float | None = _f(help="their sample standard deviation, n - 1 in the denominator (None when a value "
                                "is missing)")

    @classmethod
    def of(cls, values: list[float | None]) -> "Spread":
        if not values or any(v is None for v in values):
            return cls(values=list(values))
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        return cls(values=list(values), mean=mean, std=var ** 0.5)


@dataclass
class Repeats:
    """The student (and the baseline) trained with several seeds (hyperparameters.repeats): how much
    of the result is the seed. The first seed's run is the delivered student, scored above."""
    seeds: list[int] = _f(help="the seeds, hyperparameters.seed first", factory=list)
    metric: str = _f("accuracy", help="the score: accuracy on the labelled evaluation rows, or agreement with the "
                                      "teacher when no evaluation row is labelled")
    student: Spread = _f(help="the distilled student's score per seed", factory=Spread)
    baseline: Spread | None = _f(help="the baseline's score per seed (when one is trained)")
    gain: Spread | None = _f(help="student - baseline per seed (paired by seed; accuracy only)")


@dataclass
class DistillResult:
    evaluated_on: str = _f("test", help="the split every figure is on: test (when given) or validation")
    num_eval_samples: int = _f(0, help="rows of that split")
    teacher: TeacherReport = _f(help="the teacher", factory=TeacherReport)
    student: StudentReport = _f(help="the distilled student", factory=StudentReport)
    baseline: ModelReport | None = _f(help="the same student trained without the teacher (when asked)")
    compression: float | None = _f(help="teacher parameters / student parameters")
    speedup: float | None = _f(help="teacher latency / student latency (CPU, batch of 64)")
    temperature: float = _f(0.0, help="T the student was trained with (the sweep's choice in a sweep)")
    alpha: float = _f(0.0, help="alpha the student was trained with (the sweep's choice in a sweep)")
    loss: str = _f("", help="the distillation loss")
    standardized: bool = _f(False, help="inputs were standardised (the exported student takes raw inputs)")
    distillation_gain: float | None = _f(help="student accuracy - baseline accuracy (None without both)")
    comparison: Comparison | None = _f(help="student vs baseline on the same rows, with its uncertainty")
    sweep: Sweep | None = _f(help="the (T, alpha) sweep, when one ran")
    repeats: Repeats | None = _f(help="scores over several seeds, when hyperparameters.repeats > 1")
    warnings: list[dict[str, Any]] = _f(
        help="what makes the result suspect: {code: near_chance or diverged, model, message, ...figures}",
        factory=list)
    seconds: float = _f(0.0, help="wall-clock seconds of the run up to export")
    onnx: str | None = _f(help="file name of the ONNX student (None when its export failed or was off)")

    @property
    def agreement(self) -> float | None:
        return self.student.agreement

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (summary.json, the job's `result`). `agreement` repeats the student's at the
        top level, where results before the typed form had it."""
        out = asdict(self)
        out["agreement"] = self.student.agreement
        return out
