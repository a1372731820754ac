"""One distillation, start to finish: the function the CLI and the worker both call.

Phases, in order (the names the service reports in `progress.phase`):
  loading          read the data, fit standardisation on the training split, load the teacher
  caching_teacher  teacher logits for the training, validation and evaluation splits
  training         the student with the distillation loss
  baseline         the same student from scratch (same data, budget and seed), when asked
  repeats          both again with seeds seed + 1, ... (hyperparameters.repeats > 1): scores only
  evaluating       teacher, student and baseline on the evaluation split; sizes and latencies
  exporting        student.safetensors (self-describing), student.onnx, summary.json
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

import math

from kdcore import augment
from kdcore.data import (ArrayDataset, Standardizer, keep_labels_per_class, load_builtin, read_dataset_file,
                         split_indices)
from kdcore.errors import DataError, SpecError, TeacherError
from kdcore.evaluation import accuracy, agreement, evaluate, mean_kl, predict_logits, size_report
from kdcore.export import export_onnx, save_student
from kdcore.formats import sniff_format
from kdcore.models import build_model, check_input_shape, resolve_arch_params
from kdcore.spec import DistillSpec
from kdcore.spec_checks import DataInfo, check_student_accepted, header_shapes, state_dict_mismatches, state_dict_shapes
from kdcore.teacher_logit_cache import can_cache, compute_teacher_logits
from kdcore.onnx_sandbox import GraphLimits
from kdcore.results import (DistillResult, ModelReport, Repeats, Spread, StudentReport, Sweep, SweepChoice, SweepEpoch,
                            SweepPoint, TeacherReport)
from kdcore.teachers import Teacher, close_teacher, inspect_teacher_file, load_teacher
from kdcore.distributed import train_data_parallel
from kdcore.trainer import Callbacks, EpochMetrics, StepInfo, TrainResult, resolve_device
from kdcore.verdict import paired_comparison, quality_warnings

PHASES = ("loading", "caching_teacher", "training", "baseline", "repeats", "evaluating", "exporting")
# Events that are not plain information (the service stores a level with every event; the rest,
# and its own status events other than `failed`, are "info"). `warning`: one of result["warnings"].
EVENT_LEVELS = {"warning": "warning", "onnx_export_failed": "warning"}
STUDENT_FILE = "student.safetensors"
ONNX_FILE = "student.onnx"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


class PipelineCallbacks(Callbacks):
    """Trainer callbacks plus the pipeline's own: phase changes and typed events."""

    def on_phase(self, phase: str) -> None: ...

    def on_event(self, type: str, message: str, data: dict | None = None) -> None: ...

    def on_teacher_progress(self, done: int, total: int) -> None:
        """`done` of `total` training rows have their teacher logits (caching_teacher phase)."""

    def on_repeat_checkpoint(self, info) -> None:
        """A repeat run (hyperparameters.repeats) wrote a checkpoint: keep it where a resumed job finds
        it. Not announced: a repeat reports only its score (a `repeat` event), and a few-label baseline
        checkpoints every one of its many short epochs."""


@dataclass
class Splits:
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset | None
    # Rows of the training source (the file or builtin split that precomputed teacher logits are
    # aligned with) that ended up in train and, when carved out of it, in val.
    train_rows: torch.Tensor
    val_rows: torch.Tensor | None
    standardizer: Standardizer | None
    # Training rows that came from dataset.unlabeled_paths (after the source's train_rows).
    extra_rows: int = 0

    @property
    def eval_name(self) -> str:
        return "test" if self.test is not None else "validation"

    @property
    def eval_set(self) -> ArrayDataset:
        return self.test if self.test is not None else self.val


def load_splits(spec: DistillSpec) -> Splits:
    """Train, validation and (optional) test splits, standardised with statistics of train only.

    Validation is carved out of the training source (when no validation file is given) before
    anything else, so it keeps its labels; then `labels_per_class` drops the other labels of the
    training split, and the inputs of `unlabeled_paths` join it (with their labels, where they
    have any). `num_classes` of every split is the largest any labelled file implies (0 when no
    row anywhere is labelled: the teacher then decides)."""
    ds = spec.dataset
    if ds.builtin is not None:
        parts = load_builtin(ds.builtin)
        source, test = parts["train"], parts["test"]
        val_given = None
    else:
        source = read_dataset_file(ds.train_path)
        num_classes = source.num_classes
        val_given = _read_split(ds.validation_path, "dataset.validation_path", source, num_classes or None)
        test = _read_split(ds.test_path, "dataset.test_path", source, num_classes or None)

    if val_given is not None:
        train_set, val_set = source, val_given
        train_rows, val_rows = torch.arange(source.num_samples), None
    else:
        train_rows, val_rows = split_indices(source.y, fraction=ds.validation_fraction,
                                             seed=spec.hyperparameters.seed)
        train_set, val_set = source.subset(train_rows), source.subset(val_rows)

    if ds.labels_per_class is not None:
        train_set = keep_labels_per_class(train_set, ds.labels_per_class, seed=spec.hyperparameters.seed)
    extras = [_read_split(path, f"dataset.unlabeled_paths[{i}]", train_set, None)
              for i, path in enumerate(ds.unlabeled_paths)]
    if extras:
        train_set = ArrayDataset(torch.cat([train_set.x, *(e.x for e in extras)]),
                                 torch.cat([train_set.y, *(e.y for e in extras)]), train_set.num_classes)
    num_classes = max([train_set.num_classes, val_set.num_classes, 0 if test is None else test.num_classes,
                       *(e.num_classes for e in extras)])
    for part in (train_set, val_set, test):
        if part is not None:
            part.num_classes = num_classes

    standardizer = None
    if ds.standardize:
        standardizer = Standardizer.fit(train_set.x)
        train_set, val_set = train_set.map_x(standardizer.apply), val_set.map_x(standardizer.apply)
        test = test.map_x(standardizer.apply) if test is not None else None
    return Splits(train_set, val_set, test, train_rows, val_rows, standardizer,
                  extra_rows=sum(e.num_samples for e in extras))


def _read_split(path: str | None, field: str, train: ArrayDataset, num_classes: int | None) -> ArrayDataset | None:
    if path is None:
        return None
    try:
        split = read_dataset_file(path, num_classes=num_classes)
    except DataError as e:
        raise DataError(e.message, field=field) from None
    if split.input_shape != train.input_shape:
        raise DataError(f"input shape {list(split.input_shape)} differs from the training set's "
                        f"{list(train.input_shape)}", field=field)
    return split


def check_models(spec: DistillSpec, *, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Student architecture, parameters and size against the data; raises SpecError naming the field."""
    check_student_accepted(spec.student.arch, spec.student.arch_params, DataInfo(input_shape, num_classes, 0),
                           batch_size=spec.hyperparameters.batch_size)
    if spec.teacher.arch is not None:
        tparams = resolve_arch_params(spec.teacher.arch, spec.teacher.arch_params, field="teacher.arch_params")
        check_input_shape(spec.teacher.arch, tparams, input_shape, field="teacher.arch")


def run_distillation(spec: DistillSpec, *, out_dir: Path, checkpoint_dir: Path | None = None,
                     callbacks: PipelineCallbacks | None = None, export_onnx_file: bool = True,
                     extra_metadata: dict[str, Any] | None = None,
                     teacher_limits: GraphLimits = GraphLimits()) -> DistillResult:
    """Run the whole job and return its result (`to_dict()` of it is also written to out_dir/summary.json).

    An ONNX teacher runs in a child process with `teacher_limits` (kdcore/onnx_sandbox.py) that
    polls `callbacks.should_stop`; the child ends with the run, however it ends."""
    opened: list[Teacher] = []
    try:
        return _distill(spec, out_dir=out_dir, checkpoint_dir=checkpoint_dir,
                        cb=callbacks or PipelineCallbacks(), export_onnx_file=export_onnx_file,
                        extra_metadata=extra_metadata, teacher_limits=teacher_limits, opened=opened)
    finally:
        for teacher in opened:
            close_teacher(teacher)


def _distill(spec: DistillSpec, *, out_dir: Path, checkpoint_dir: Path | None, cb: PipelineCallbacks,
             export_onnx_file: bool, extra_metadata: dict[str, Any] | None, teacher_limits: GraphLimits,
             opened: list[Teacher]) -> DistillResult:
    def open_teacher(**kwargs) -> Teacher:
        teacher = load_teacher(spec.teacher.path, arch=spec.teacher.arch, arch_params=spec.teacher.arch_params,
                               limits=teacher_limits, should_stop=cb.should_stop, **kwargs)
        opened.append(teacher)
        return teacher

    hp = spec.hyperparameters
    # "auto" follows resources.device when that asks for CUDA (and fails without one).
    device = resolve_device("cuda" if hp.device == "auto" and spec.resources.device == "cuda" else hp.device)

    def train_run(model, **kwargs) -> TrainResult:  # trainer.train, data-parallel when resources ask for it
        return train_data_parallel(model, processes=spec.resources.processes, **kwargs)

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    cb.on_phase("loading")
    splits = load_splits(spec)
    spec.resolve_labels(splits.train.num_labeled)
    input_shape, num_classes = splits.train.input_shape, splits.train.num_classes
    check_models(spec, input_shape=input_shape, num_classes=num_classes)
    augment.check_input_shape(hp.augmentations, input_shape)
    if splits.train.num_labeled == 0:  # no labelled training row: the teacher says how many classes
        labels_seen, num_classes = num_classes, _teacher_classes(spec.teacher.path, open_teacher, input_shape,
                                                                 teacher_limits)
        if labels_seen > num_classes:
            raise DataError(f"has labels up to {labels_seen - 1} but the teacher predicts {num_classes} classes",
                            field="dataset.test_path" if splits.test is not None else "dataset.validation_path")
        for part in (splits.train, splits.val, splits.test):
            if part is not None:
                part.num_classes = num_classes
    teacher = open_teacher(input_shape=input_shape, num_classes=num_classes, device=str(device))
    _check_teacher(teacher, splits, num_classes)
    if splits.standardizer is not None:
        teacher = _RawInputTeacher(teacher, splits.standardizer)
    labeled = splits.train.num_labeled
    cb.on_event("data_loaded", f"{splits.train.num_samples} training ({labeled} labelled, "
                f"{splits.train.num_samples - labeled} unlabelled), {splits.val.num_samples} validation "
                f"samples, input shape {list(input_shape)}, {num_classes} classes",
                {"train": splits.train.num_samples, "train_labeled": labeled,
                 "validation": splits.val.num_samples,
                 "test": None if splits.test is None else splits.test.num_samples,
                 "input_shape": list(input_shape), "num_classes": num_classes})

    # Teacher logits once, reused by every epoch of both runs and by the evaluation.
    cb.on_phase("caching_teacher")
    t0 = time.perf_counter()
    # Precomputed logits are looked up by row of the training source, which the trainer's batch
    # indices (positions in the training split) are not; they ignore the inputs anyway, so augmented
    # batches would get the same rows from the cache.
    cacheable = can_cache(teacher, hp) or teacher.needs_indices
    train_logits = (compute_teacher_logits(teacher, splits.train.x, indices=_source_rows(splits), device=device,
                                           on_progress=cb.on_teacher_progress)
                    if cacheable else None)
    val_logits = _teacher_logits_for(teacher, splits.val, splits.val_rows, device)
    eval_logits = (val_logits if splits.test is None
                   else _teacher_logits_for(teacher, splits.test, None, device))
    cb.on_event("teacher_cached" if cacheable else "teacher_live",
                f"teacher logits cached in {time.perf_counter() - t0:.2f}s" if cacheable else
                "teacher runs live every step (augmentation is on)",
                {"cached": cacheable, "seconds": time.perf_counter() - t0})

    cb.on_phase("training")

    def train_student(point_hp, point: int | None, points: int | None, callbacks: Callbacks,
                      ckpt: Path | None, run: str = "student") -> tuple[torch.nn.Module, TrainResult]:
        torch.manual_seed(point_hp.seed)  # every sweep point starts from the same weights
        model = build_model(spec.student.arch, spec.student.arch_params, input_shape=input_shape,
                            num_classes=num_classes)
        if spec.student.init_path is not None:
            _load_init_weights(model, spec.student.init_path)
        result = train_run(model, train_set=splits.train, val_set=splits.val, hp=point_hp, run=run,
                           teacher_train_logits=train_logits, live_teacher=None if cacheable else teacher,
                           teacher_val_logits=val_logits, callbacks=callbacks, device=device,
                           checkpoint_dir=ckpt, point=point, points=points)
        return model, result

    def train_baseline(run_hp, callbacks: Callbacks, ckpt: Path | None, run: str = "baseline",
                       point: int | None = None, points: int | None = None) -> tuple[torch.nn.Module, TrainResult]:
        # What the user would have without the teacher: the labelled rows only, for the same
        # number of optimizer steps the distilled run was given (equal epochs on fewer rows would
        # be far fewer steps), with the same early-stopping rule and seed.
        torch.manual_seed(run_hp.seed)  # same initial weights as the distilled student
        model = build_model(spec.student.arch, spec.student.arch_params, input_shape=input_shape,
                            num_classes=num_classes)
        result = train_run(model, train_set=splits.train.labeled_only(), val_set=splits.val, hp=run_hp, run=run,
                           teacher_val_logits=val_logits, callbacks=callbacks, device=device, checkpoint_dir=ckpt,
                           max_steps=planned_steps(splits.train.num_samples, hp), point=point, points=points)
        return model, result

    sweep = None
    if not hp.is_sweep:
        student, student_run = train_student(hp, None, None, cb,
                                             None if checkpoint_dir is None else checkpoint_dir / "student")
        chosen_hp = hp
    else:
        student, student_run, chosen_hp, sweep = _sweep(hp, train_student, splits.val, val_logits, cb,
                                                        checkpoint_dir, device)
    history = student_run.history

    baseline = None
    baseline_run: TrainResult | None = None
    baseline_history: list[EpochMetrics] = []
    if spec.baseline:
        cb.on_phase("baseline")
        baseline, baseline_run = train_baseline(chosen_hp, cb,
                                                None if checkpoint_dir is None else checkpoint_dir / "baseline")
        baseline_history = baseline_run.history

    # More seeds of the same configuration: only their scores are kept (the delivered student is
    # the first seed's). Each run checkpoints into its own directory, named like its run.
    repeat_scores: list[tuple[int, _Scores, _Scores | None]] = []
    if hp.repeats > 1:
        cb.on_phase("repeats")
        extra = hp.repeats - 1
        for i in range(extra):
            seed_hp = replace(chosen_hp, seed=hp.seed + 1 + i)
            scores: dict[str, _Scores] = {}
            for kind in ("student", "baseline") if spec.baseline else ("student",):
                run = f"{kind}-seed{seed_hp.seed}"
                ckpt = None if checkpoint_dir is None else checkpoint_dir / run
                model, _ = (train_student(seed_hp, i, extra, _RepeatCallbacks(cb), ckpt, run=run) if kind == "student"
                            else train_baseline(seed_hp, _RepeatCallbacks(cb), ckpt, run=run, point=i, points=extra))
                scores[kind] = _evaluate(model, eval_logits, splits.eval_set)
                del model
            repeat_scores.append((seed_hp.seed, scores["student"], scores.get("baseline")))
            line = ", ".join(f"{kind} {_score_line(sc)}" for kind, sc in scores.items())
            cb.on_event("repeat", f"repeat {i + 2}/{hp.repeats} (seed {seed_hp.seed}): {line}",
                        {"seed": seed_hp.seed, "index": i + 1,
                         **{kind: {"accuracy": sc.accuracy, "agreement": sc.agreement} for kind, sc in scores.items()}})

    cb.on_phase("evaluating")
    result = _evaluate_models(spec, splits, teacher, student, baseline, eval_logits)
    if repeat_scores:
        result.repeats = _repeats_summary(hp.seed, result, repeat_scores)
    result.teacher.val_accuracy = _labeled_accuracy(val_logits, splits.val)
    result.temperature, result.alpha = chosen_hp.temperature, chosen_hp.alpha
    result.student.record_run(student_run, labeled=labeled, unlabeled=splits.train.num_samples - labeled)
    if baseline_run is not None:
        result.baseline.record_run(baseline_run, labeled=labeled, unlabeled=0)
    result.sweep = sweep
    # near chance or a runaway loss: in the result and as warning events (kdcore/verdict.py)
    result.warnings = quality_warnings(
        accuracies={"student": result.student.accuracy, "teacher": result.teacher.accuracy},
        evaluated_on=result.evaluated_on, num_classes=num_classes,
        losses={run: [m.train_loss for m in h] for run, h in (("student", history), ("baseline", baseline_history))
                if h})
    for warning in result.warnings:
        cb.on_event("warning", warning["message"], warning)
    result.seconds = round(time.perf_counter() - started, 3)

    cb.on_phase("exporting")
    metrics = {k: v for k, v in asdict(result.student).items() if k not in ("sha256", "size_bytes")}
    metadata = {"spec": spec.to_dict(), "metrics": metrics, **(extra_metadata or {})}
    if splits.standardizer is not None:
        metadata["standardizer"] = splits.standardizer.state_dict()
    student.cpu()
    result.student.sha256 = save_student(out_dir / STUDENT_FILE, student, metadata=metadata)
    result.student.size_bytes = (out_dir / STUDENT_FILE).stat().st_size
    if export_onnx_file:
        try:
            export_onnx(student, out_dir / ONNX_FILE, standardizer=splits.standardizer,
                        metadata={"arch": spec.student.arch, "metrics": {"accuracy": result.student.accuracy,
                                                                          "evaluated_on": result.evaluated_on},
                                  **(extra_metadata or {})})
            result.onnx = ONNX_FILE
        except Exception as e:  # the safetensors student stands; say why ONNX is missing
            cb.on_event("onnx_export_failed", f"ONNX export failed: {e}", {"error": str(e)})
    with open(out_dir / METRICS_FILE, "w") as f:
        for m in [*history, *baseline_history]:
            f.write(json.dumps(m.to_dict()) + "\n")
    (out_dir / SUMMARY_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result


def planned_steps(num_train_rows: int, hp) -> int:
    """Optimizer steps a run of hp.epochs epochs over `num_train_rows` rows takes."""
    return math.ceil(num_train_rows / hp.batch_size) * hp.epochs


def _teacher_classes(path: str, open_teacher: Callable[..., Teacher], input_shape: tuple[int, ...],
                     limits: GraphLimits) -> int:
    """The teacher's output count, for data with no label to count classes from."""
    guess = inspect_teacher_file(path, limits=limits).get("num_classes")
    if guess:
        return int(guess)
    probe = open_teacher(input_shape=input_shape, num_classes=None, device="cpu")
    close_teacher(probe)
    return int(probe.num_classes)


class _SweepPointCallbacks(Callbacks):
    """A sweep point's trainer callbacks. Steps, cancellation and resumes go through to the job's
    callbacks (StepInfo carries `point`/`points`, so progress can grow across points).
    Per-epoch metrics do not: the service keeps one metric row per (job, run, epoch), so the points'
    epochs are reported as `sweep_epoch` events (still before each checkpoint; checkpoints as
    `sweep_checkpoint` events) and the chosen point's
    epochs are reported through `on_epoch_end` once the sweep has picked it."""

    def __init__(self, outer: PipelineCallbacks, point: int, points: int, temperature: float, alpha: float):
        self.outer, self.point, self.points = outer, point, points
        self.temperature, self.alpha = temperature, alpha

    def on_step(self, info: StepInfo) -> None:
        self.outer.on_step(info)

    def on_epoch_end(self, m: EpochMetrics) -> None:
        self.outer.on_event("sweep_epoch", f"sweep point {self.point + 1}/{self.points} (T={self.temperature:g}, "
                            f"alpha={self.alpha:g}) epoch {m.epoch}/{m.epochs}: "
                            + (f"val accuracy {m.val_accuracy:.4f}" if m.val_accuracy is not None
                               else f"val agreement {m.val_agreement:.4f}"),
                            {**m.to_dict(), "temperature": self.temperature, "alpha": self.alpha})

    def should_stop(self) -> bool:
        return self.outer.should_stop()

    def on_checkpoint(self, info) -> None:
        # Not the job's on_checkpoint: its events are one per (run, epoch), which the points share.
        self.outer.on_event("sweep_checkpoint", f"sweep point {self.point + 1}/{self.points}: checkpoint after "
                            f"epoch {info.epoch}", {"point": self.point, "epoch": info.epoch,
                                                     "sha256": info.sha256, "bytes": info.bytes})

    def on_resume(self, *, run: str, epoch: int, skipped) -> None:
        self.outer.on_resume(run=f"{run}[{self.point}]", epoch=epoch, skipped=skipped)


class _RepeatCallbacks(Callbacks):
    """A repeat run's trainer callbacks: steps (StepInfo carries the repeat as `point`/`points`),
    cancellation, checkpoints (as `on_repeat_checkpoint`) and resumes go through to the job's
    callbacks; per-epoch metrics do not (the service keeps one metric row per (job, run, epoch) for the delivered student and the
    baseline; a repeat reports its score once, as a `repeat` event)."""

    def __init__(self, outer: PipelineCallbacks):
        self.outer = outer

    def on_step(self, info: StepInfo) -> None:
        self.outer.on_step(info)

    def should_stop(self) -> bool:
        return self.outer.should_stop()

    def on_checkpoint(self, info) -> None:
        self.outer.on_repeat_checkpoint(info)

    def on_resume(self, *, run: str, epoch: int, skipped) -> None:
        self.outer.on_resume(run=run, epoch=epoch, skipped=skipped)


def _score_line(scores: "_Scores") -> str:
    if scores.accuracy is not None:
        return f"accuracy {scores.accuracy:.4f}"
    return "agreement " + ("n/a" if scores.agreement is None else f"{scores.agreement:.4f}")


def _repeats_summary(seed: int, result: DistillResult,
                     extra: list[tuple[int, "_Scores", "_Scores | None"]]) -> Repeats:
    """The first seed's figures (the delivered student and its baseline, in `result`) and the
    repeats', as mean ± sample standard deviation."""
    metric = "accuracy" if result.student.accuracy is not None else "agreement"
    student = [getattr(result.student, metric), *(getattr(s, metric) for _, s, _ in extra)]
    out = Repeats(seeds=[seed, *(sd for sd, _, _ in extra)], metric=metric, student=Spread.of(student))
    if result.baseline is not None:
        baseline = [getattr(result.baseline, metric), *(getattr(b, metric) for _, _, b in extra)]
        out.baseline = Spread.of(baseline)
        if metric == "accuracy":
            out.gain = Spread.of([None if s is None or b is None else s - b for s, b in zip(student, baseline)])
    return out


def _sweep(hp, train_student, val: ArrayDataset, val_logits: torch.Tensor | None, cb: PipelineCallbacks,
           checkpoint_dir: Path | None, device: torch.device):
    """Train every (T, alpha) point, same seed, data and cached teacher logits; pick the best by
    validation accuracy of the weights each point ends with, then validation agreement with the
    teacher, then grid order. Each point checkpoints into its own `student-{index}` directory."""
    grid = hp.grid()
    points: list[SweepPoint] = []
    best = None  # (key, index, model, run)
    for i, (t, a) in enumerate(grid):
        point_hp = replace(hp, temperature=t, alpha=a)
        model, run = train_student(point_hp, i, len(grid), _SweepPointCallbacks(cb, i, len(grid), t, a),
                                   None if checkpoint_dir is None else checkpoint_dir / f"student-{i}")
        logits = predict_logits(model, val.x, device=device).cpu()
        labeled = val.labeled
        acc = ((logits.argmax(1) == val.y)[labeled].float().mean().item() if bool(labeled.any()) else None)
        agree = (None if val_logits is None else
                 (logits.argmax(1) == val_logits.cpu().argmax(1)).float().mean().item())
        points.append(SweepPoint(temperature=t, alpha=a, val_accuracy=acc, val_agreement=agree,
                                 epochs_run=run.epochs_completed, best_epoch=run.best_epoch,
                                 stopped_early=run.stopped_early,
                                 history=[SweepEpoch(epoch=m.epoch, train_loss=m.train_loss, val_accuracy=m.val_accuracy,
                                                     val_agreement=m.val_agreement) for m in run.history]))
        score = f"val accuracy {acc:.4f}" if acc is not None else f"val agreement {agree:.4f}"
        cb.on_event("sweep_point", f"sweep point {i + 1}/{len(grid)} (T={t:g}, alpha={a:g}): {score}",
                    {k: v for k, v in asdict(points[-1]).items() if k != "history"})
        key = (-1.0 if acc is None else acc, -1.0 if agree is None else agree)
        if best is None or key > best[0]:  # strictly better: ties keep the earlier point
            best = (key, i, model, run)
        else:
            del model
    _, index, student, run = best
    chosen = points[index]
    best_score = (f"val accuracy {chosen.val_accuracy:.4f}" if chosen.val_accuracy is not None
                  else f"val agreement {chosen.val_agreement:.4f}")
    cb.on_event("sweep_best", f"sweep chose T={chosen.temperature:g}, alpha={chosen.alpha:g} ({best_score})",
                {"index": index, "temperature": chosen.temperature, "alpha": chosen.alpha})
    for m in run.history:  # the student's per-epoch record is the chosen point's
        cb.on_epoch_end(m)
    sweep = Sweep(points=points, best=SweepChoice(temperature=chosen.temperature, alpha=chosen.alpha, index=index))
    return student, run, replace(hp, temperature=chosen.temperature, alpha=chosen.alpha), sweep


def _check_teacher(teacher: Teacher, splits: Splits, num_classes: int) -> None:
    if teacher.num_classes != num_classes:
        raise TeacherError(f"the teacher predicts {teacher.num_classes} classes but the dataset has "
                           f"{num_classes}", field="teacher")
    if teacher.needs_indices and splits.extra_rows:
        raise SpecError("precomputed teacher logits cover the training file's rows only and cannot label "
                        "extra inputs: upload the teacher itself (safetensors or ONNX)",
                        field="dataset.unlabeled_paths")
    if teacher.needs_indices:
        n = int(splits.train_rows.numel() + (0 if splits.val_rows is None else splits.val_rows.numel()))
        teacher.check_against(n)


class _RawInputTeacher:
    """The teacher was trained on the data as the user gave it, not on kdcore's standardisation
    (fitted on a split the user never saw): undo it before the teacher sees a batch."""

    def __init__(self, teacher: Teacher, standardizer: Standardizer):
        self.teacher = teacher
        self.mean, self.std = standardizer.mean, standardizer.std

    def logits(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.teacher.logits(x * self.std.to(x.device) + self.mean.to(x.device), indices)

    def __getattr__(self, name: str) -> Any:  # num_classes, input_shape, module, parameters, ...
        if name == "teacher":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.teacher, name)


def _source_rows(splits: Splits) -> torch.Tensor:
    """Row indices for the teacher-logit cache: the training source's rows (what precomputed logits
    are aligned with), then positions past them for the rows of unlabelled files (only teachers that
    read inputs, never precomputed logits, see those: `_check_teacher`)."""
    if not splits.extra_rows:
        return splits.train_rows
    start = int(splits.train_rows.max()) + 1 if splits.train_rows.numel() else 0
    return torch.cat([splits.train_rows, torch.arange(start, start + splits.extra_rows)])


def _teacher_logits_for(teacher: Teacher, split: ArrayDataset, rows: torch.Tensor | None,
                        device: torch.device) -> torch.Tensor | None:
    """Teacher logits for a split; None where precomputed logits do not cover it."""
    if teacher.needs_indices and rows is None:
        return None
    return compute_teacher_logits(teacher, split.x, indices=rows, device=device)


def _load_init_weights(model: torch.nn.Module, path: str) -> None:
    if sniff_format(path) != "safetensors":
        raise SpecError("initial student weights must be a safetensors state dict", field="student.init_path")
    # keys and shapes from the header, before any tensor is loaded: the same check the service makes
    # at submission (kdcore.spec_checks.check_student_init)
    parts = state_dict_mismatches(state_dict_shapes(model), header_shapes(path), "the student")
    if parts:
        raise SpecError("initial weights do not fit the student: " + "; ".join(parts), field="student.init_path")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path), strict=True)


def _evaluate_models(spec: DistillSpec, splits: Splits, teacher: Teacher, student: torch.nn.Module,
                     baseline: torch.nn.Module | None, eval_logits: torch.Tensor | None) -> DistillResult:
    """Teacher, student and baseline on the evaluation split, with sizes and CPU latencies."""
    data, input_shape = splits.eval_set, splits.train.input_shape
    scores = _evaluate(student, eval_logits, data)
    module = getattr(teacher, "module", None)
    onnx_latency = None
    if module is None and teacher.input_shape is not None and hasattr(teacher, "measure_latency"):
        # an ONNX teacher, timed in its own process on the batch measure_latency would make
        batch = torch.randn((64, *input_shape), generator=torch.Generator().manual_seed(0))
        onnx_latency = teacher.measure_latency(batch.numpy())
    sizes = size_report(student.cpu(), module, input_shape=input_shape, teacher_latency=onnx_latency,
                        teacher_parameters=None if module is not None else getattr(teacher, "parameters", None))
    result = DistillResult(
        evaluated_on=splits.eval_name, num_eval_samples=data.num_samples,
        teacher=TeacherReport(accuracy=scores.teacher_accuracy, ece=scores.teacher_ece,
                              parameters=sizes.teacher_parameters, macs=sizes.teacher_macs,
                              latency_ms=None if sizes.teacher_latency_s is None else sizes.teacher_latency_s * 1e3),
        student=StudentReport(arch=spec.student.arch,
                              arch_params=resolve_arch_params(spec.student.arch, spec.student.arch_params),
                              accuracy=scores.accuracy, ece=scores.ece, agreement=scores.agreement,
                              mean_kl=scores.mean_kl, parameters=sizes.student_parameters, macs=sizes.student_macs,
                              latency_ms=sizes.student_latency_s * 1e3),
        compression=sizes.compression_ratio, speedup=sizes.speedup,
        temperature=spec.hyperparameters.temperature, alpha=spec.hyperparameters.alpha,
        loss=spec.hyperparameters.loss, standardized=splits.standardizer is not None)
    if baseline is not None:
        base = _evaluate(baseline, eval_logits, data)
        result.baseline = ModelReport(accuracy=base.accuracy, ece=base.ece, agreement=base.agreement,
                                      mean_kl=base.mean_kl)
        if scores.accuracy is not None and base.accuracy is not None:
            result.distillation_gain = scores.accuracy - base.accuracy
            # the same labelled rows, so a paired test: McNemar's exact test on the rows one gets right
            result.comparison = paired_comparison(scores.correct, base.correct)
    return result


def _labeled_accuracy(logits: torch.Tensor | None, data: ArrayDataset) -> float | None:
    """Accuracy of given logits on the labelled rows of `data` (None without logits or labels)."""
    labeled = data.labeled
    if logits is None or not bool(labeled.any()):
        return None
    return accuracy(logits.cpu()[labeled], data.y[labeled])


@dataclass
class _Scores:
    """One model on the evaluation split. Accuracy and calibration on its labelled rows (None when
    none is); the teacher's too; agreement and KL with the teacher on every row (None without teacher
    logits); `correct`, the model's per-row correctness on the labelled rows, from the same
    predictions as its accuracy, for the paired comparison with the baseline."""
    accuracy: float | None = None
    ece: float | None = None
    teacher_accuracy: float | None = None
    teacher_ece: float | None = None
    agreement: float | None = None
    mean_kl: float | None = None
    correct: torch.Tensor | None = None


def _evaluate(model: torch.nn.Module, eval_logits: torch.Tensor | None, data: ArrayDataset) -> _Scores:
    logits = predict_logits(model, data.x)  # once: every number below comes from these predictions
    labeled = data.labeled
    out = _Scores()
    if bool(labeled.any()):
        rows = None if bool(labeled.all()) else labeled.nonzero().flatten()

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if rows is None else t[rows]

        report = evaluate(student=model, student_logits=pick(logits),
                          teacher_logits=None if eval_logits is None else pick(eval_logits),
                          x=pick(data.x), y=pick(data.y))
        out.accuracy, out.ece = report.student_accuracy, report.student_ece
        out.teacher_accuracy, out.teacher_ece = report.teacher_accuracy, report.teacher_ece
        out.agreement, out.mean_kl = report.agreement, report.mean_kl
        out.correct = pick(logits).argmax(1) == pick(data.y)
    if eval_logits is not None and not bool(labeled.all()):  # agreement and KL on every row
        out.agreement, out.mean_kl = agreement(logits, eval_logits), mean_kl(eval_logits, logits)
    return out
