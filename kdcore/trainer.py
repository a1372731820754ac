"""The training loop: one flat loop for both the distilled student and the from-scratch baseline.

Read it top to bottom: batch by index, (teacher logits), forward, loss, backward, clip, step,
log, and once per epoch: validate, checkpoint. Everything the outside world needs (progress rows,
heartbeats, cancellation) comes in through `Callbacks`; kdcore knows nothing of databases.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kdcore.augment import augment, targets as hard_targets
from kdcore.checkpoint import (CheckpointInfo, capture_rng_state, load_latest_checkpoint, restore_rng_state,
                               save_checkpoint)
from kdcore.data import UNLABELED, ArrayDataset, IndexBatcher
from kdcore.errors import Stopped
from kdcore.evaluation import predict_logits
from kdcore.losses import hard_term, kd_loss
from kdcore.ranks import Rank
from kdcore.schedules import lr_at
from kdcore.spec import Hyperparameters
from kdcore.teachers import Teacher


@dataclass
class StepInfo:
    run: str  # "student" or "baseline" ("student-seed3", "baseline-seed3" for a repeat)
    epoch: int  # 0-based epoch this step belongs to
    step: int  # optimizer steps done so far in this run (1-based after the first step)
    steps: int  # optimizer steps the run will take in all
    loss: float
    hard: float
    soft: float
    lr: float
    point: int | None = None  # index of the sweep point (grid order) or repeat; None outside a sweep or repeats
    points: int | None = None  # sweep points (or repeats after the first) in all


@dataclass
class EpochMetrics:
    run: str
    epoch: int  # 1-based: "epoch 3 of 10 is done"
    epochs: int
    train_loss: float
    train_hard: float
    train_soft: float
    train_accuracy: float | None  # on the labelled training rows; None when a run saw none
    val_accuracy: float | None  # on the labelled validation rows; None when none is labelled
    val_agreement: float | None  # top-1 agreement with the teacher on the validation split
    lr: float
    seconds: float
    point: int | None = None  # index of the sweep point (grid order); None outside a sweep

    def to_dict(self) -> dict:
        return asdict(self)


class Callbacks:
    """Hooks the trainer calls; the default does nothing. The worker subclasses it to write
    progress, metric rows, events and checkpoints, and to answer `should_stop` from its heartbeat.

    Once per epoch, in this order: `on_epoch_end`, then the checkpoint is written, then
    `on_checkpoint`. Reporting first means no epoch goes unreported when the process dies between
    the two (its checkpoint is not on disk, so the resumed run trains and reports it again), and an
    exception raised by `on_epoch_end` (a lost lease) keeps a stale process from writing a
    checkpoint. The price: after a resume `on_epoch_end` (and, when a damaged newest checkpoint was
    skipped, `on_checkpoint`) may come again for an epoch already reported, with the same numbers
    on CPU. Callbacks that record them must be idempotent per (run, epoch)."""

    def on_step(self, info: StepInfo) -> None: ...

    def on_epoch_end(self, metrics: EpochMetrics) -> None: ...

    def should_stop(self) -> bool:
        return False

    def on_checkpoint(self, info: CheckpointInfo) -> None: ...

    def on_resume(self, *, run: str, epoch: int, skipped: list[tuple[Path, str]]) -> None: ...


@dataclass
class TrainResult:
    run: str
    epochs_run: int  # epochs trained in this call (fewer than hp.epochs after a resume)
    resumed_from_epoch: int  # 0 for a fresh start
    history: list[EpochMetrics] = field(default_factory=list)  # every epoch, those before a resume too
    best_epoch: int | None = None  # 1-based epoch with the best validation score (first of equals)
    best_val_accuracy: float | None = None  # that epoch's score: accuracy, or agreement without labels
    steps: int = 0  # optimizer steps taken in all, those before a resume too
    stopped_early: bool = False  # early_stopping_patience ended the run before hp.epochs
    restored_best: bool = False  # the model ends with the best epoch's weights (hp.restore_best)

    @property
    def epochs_completed(self) -> int:
        """Epochs the run trained in all, those before a resume too."""
        return len(self.history)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def train(
    model: torch.nn.Module,
    *,
    train_set: ArrayDataset,
    val_set: ArrayDataset,
    hp: Hyperparameters,
    run: str = "student",
    teacher_train_logits: torch.Tensor | None = None,
    live_teacher: Teacher | None = None,
    teacher_val_logits: torch.Tensor | None = None,
    callbacks: Callbacks | None = None,
    checkpoint_dir: Path | None = None,
    device: torch.device | None = None,
    point: int | None = None,
    points: int | None = None,
    rank: Rank | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train `model` in place.

    With `teacher_train_logits` (the teacher-logit cache, rows aligned with `train_set`) or a
    `live_teacher`, the loss is kd_loss(T, α, kind) from the hyperparameters; with neither it is
    plain cross-entropy (the from-scratch baseline). When `checkpoint_dir` holds a valid
    checkpoint the run resumes from it and ends bit-identical (on CPU) to an uninterrupted run.

    Early stopping (hp.early_stopping_patience) ends the run once the validation accuracy has not
    improved for that many epochs; hp.restore_best loads the best epoch's weights at the end. What
    both need (best accuracy and epoch, epochs without improvement, the best weights) is in the
    checkpoint, so a resumed run decides exactly as an uninterrupted one. `point`/`points` mark a
    sweep point in the StepInfo and EpochMetrics reported.

    `rank` makes this process one rank of a data-parallel run (kdcore.distributed launches the
    ranks): it trains on its shard of every global batch through DDP, the reported
    numbers are those of the global batch, and only rank 0 writes checkpoints.

    Rows labelled UNLABELED count in the soft term only (kdcore.losses); the training accuracy is
    over the labelled rows. Validation scores an epoch by its accuracy on the labelled validation
    rows, or, when none is labelled, by its agreement with the teacher (`teacher_val_logits`).
    `max_steps` runs exactly that many optimizer steps instead of hp.epochs epochs (the last
    epoch may be partial): the baseline takes the distilled run's step count on fewer rows.
    `hp.augmentations` are applied to each batch (kdcore.augment) and the live teacher labels the
    augmented view.
    """
    callbacks = callbacks or Callbacks()
    device = device or resolve_device(hp.device)
    distil = teacher_train_logits is not None or live_teacher is not None
    model.to(device)

    x, y = train_set.x.to(device), train_set.y.to(device)
    cached = teacher_train_logits.to(device) if teacher_train_logits is not None else None
    batcher = IndexBatcher(train_set.num_samples, hp.batch_size, shuffle=True, seed=hp.seed)
    steps_per_epoch = len(batcher)
    total_steps = steps_per_epoch * hp.epochs if max_steps is None else max_steps
    epochs = math.ceil(total_steps / steps_per_epoch) if steps_per_epoch else hp.epochs
    num_classes = None  # the model's outputs, known after the first forward (mixup needs it)
    val_labeled = val_set.labeled
    if not bool(val_labeled.any()) and teacher_val_logits is None:
        raise ValueError("no labelled validation row and no teacher logits to score agreement on")
    optimizer = _make_optimizer(model, hp)
    # bf16 autocast on CUDA only; kd_loss upcasts to float32 for the soft term. CPU stays float32
    # so that runs (and resumes) are bit-reproducible.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    progress = _resume(checkpoint_dir, model, optimizer, device, callbacks, run)
    start_epoch, step = progress.epoch, progress.step
    dp = rank
    # DDP after the resume: wrapping broadcasts rank 0's weights, and its gradient hooks average
    # the ranks' gradients in backward. Validation and checkpoints use the bare module.
    net = model if dp is None else dp.wrap(model, device)
    writes_checkpoints = checkpoint_dir is not None and (dp is None or dp.is_main)

    patience = hp.early_stopping_patience

    def stop_now() -> bool:
        return patience is not None and progress.bad_epochs >= patience

    result = TrainResult(run=run, epochs_run=0, resumed_from_epoch=start_epoch, history=progress.history)
    for epoch in range(start_epoch, epochs):
        if stop_now():  # a resumed run that had already stopped early
            break
        started = time.perf_counter()
        model.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss, hard, soft, correct, labelled rows
        seen = 0
        lr = hp.learning_rate
        for idx in batcher.epoch(epoch):
            if step >= total_steps:  # max_steps reached inside this (last, partial) epoch
                break
            stop = callbacks.should_stop()
            if dp is not None:  # rank 0 decides; every rank must stop at the same step
                stop = dp.any(stop, device)
            if stop:
                raise Stopped(f"{run}: stopped at epoch {epoch + 1}, step {step}")
            n_global = len(idx)
            if dp is not None:
                idx = dp.shard(idx)
            idx = idx.to(device)
            xb, yb = x[idx], y[idx]
            xb, mix = augment(xb, hp.augmentations, noise_std=hp.noise_std, shift_max=hp.shift_max,
                              mixup_alpha=hp.mixup_alpha)

            # The teacher is frozen: eval mode and no_grad live in the Teacher itself. From the
            # cache when inputs are not augmented; run live on the augmented batch otherwise.
            teacher_logits = None
            if cached is not None:
                teacher_logits = cached[idx]
            elif live_teacher is not None:
                teacher_logits = live_teacher.logits(xb, idx)

            lr = lr_at(step, base_lr=hp.learning_rate, schedule=hp.schedule, total_steps=total_steps,
                       steps_per_epoch=steps_per_epoch, step_size=hp.step_size, gamma=hp.gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr

            if autocast is not None:
                with autocast:
                    logits = net(xb)
            else:
                logits = net(xb)
            num_classes = num_classes or logits.shape[1]
            target = hard_targets(yb, mix, num_classes)
            if len(idx) == 0:  # a rank's empty shard of a tiny last batch: no loss, zero gradient
                loss = logits.float().sum() * 0.0
                hard, soft = torch.zeros((), device=device), torch.zeros((), device=device)
            elif distil:
                terms = kd_loss(logits, teacher_logits, target, temperature=hp.temperature,
                                alpha=hp.alpha, kind=hp.loss)
                loss, hard, soft = terms.total, terms.hard.detach(), terms.soft.detach()
            else:
                loss = hard_term(logits, target)
                hard, soft = loss.detach(), torch.zeros((), device=device)

            optimizer.zero_grad(set_to_none=True)
            if dp is None:
                loss.backward()
            else:
                # DDP averages the ranks' gradients; weighting each shard's mean by its share of
                # the global batch makes that average the gradient of the global batch's mean.
                (loss * (len(idx) * dp.world_size / n_global)).backward()
            if hp.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip_norm)
            optimizer.step()
            step += 1

            n = len(idx)
            labeled = yb != UNLABELED
            batch = torch.stack([loss.detach() * n, hard * n, soft * n,
                                 ((logits.argmax(1) == yb) & labeled).sum(), labeled.sum()]).double()
            if dp is not None:  # the global batch's sums, the same on every rank
                dp.all_reduce_sum(batch)
                n = n_global
            batch = batch.cpu()
            sums += batch
            seen += n
            callbacks.on_step(StepInfo(run=run, epoch=epoch, step=step, steps=total_steps,
                                       loss=batch[0].item() / n, hard=batch[1].item() / n,
                                       soft=batch[2].item() / n, lr=lr, point=point, points=points))
            if not math.isfinite(batch[0].item()):
                raise FloatingPointError(
                    f"{run}: the loss became {batch[0].item() / n} at epoch {epoch + 1}, step {step}; "
                    "lower the learning rate or set grad_clip_norm")

        val_accuracy, val_agreement = _validate(model, val_set, teacher_val_logits, device)
        metrics = EpochMetrics(
            run=run, epoch=epoch + 1, epochs=epochs,
            train_loss=sums[0].item() / seen, train_hard=sums[1].item() / seen,
            train_soft=sums[2].item() / seen,
            train_accuracy=sums[3].item() / sums[4].item() if sums[4].item() else None,
            val_accuracy=val_accuracy, val_agreement=val_agreement,
            lr=lr, seconds=time.perf_counter() - started, point=point,
        )
        progress.score(metrics, model, keep_best=hp.restore_best)
        result.history.append(metrics)
        result.epochs_run += 1
        callbacks.on_epoch_end(metrics)

        if writes_checkpoints:
            progress.epoch, progress.step = epoch + 1, step
            callbacks.on_checkpoint(save_checkpoint(checkpoint_dir, epoch=epoch + 1,
                                                    state=progress.checkpoint(model, optimizer, device)))
    result.best_epoch, result.best_val_accuracy = progress.best_epoch, progress.best_score
    result.steps = step
    result.stopped_early = stop_now() and len(result.history) < epochs
    if hp.restore_best and progress.best_state is not None:
        model.load_state_dict(copy.deepcopy(progress.best_state))
        result.restored_best = True
    model.eval()
    return result


@dataclass
class _Progress:
    """What a checkpoint carries besides weights and optimizer: where the run is, the epochs it
    reported, and the early-stopping bookkeeping (best score and epoch, epochs without improvement,
    the best weights), so a resumed run decides exactly as an uninterrupted one."""

    epoch: int = 0
    step: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict | None = None

    def score(self, m: EpochMetrics, model: torch.nn.Module, *, keep_best: bool) -> None:
        """An epoch scores by validation accuracy, or agreement with the teacher without labels."""
        score = m.val_accuracy if m.val_accuracy is not None else m.val_agreement
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, m.epoch, 0
            if keep_best:
                self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> dict:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": self.epoch, "step": self.step, **capture_rng_state(device),
                 "history": [m.to_dict() for m in self.history],
                 "early": {"best_accuracy": self.best_score, "best_epoch": self.best_epoch,
                           "bad_epochs": self.bad_epochs}}
        if self.best_state is not None:
            state["best_model"] = self.best_state
        return state


def _resume(checkpoint_dir: Path | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device, callbacks: Callbacks, run: str) -> _Progress:
    """The newest valid checkpoint's weights, optimizer and RNG state loaded into this run, and its
    progress; a fresh _Progress without one. Damaged checkpoints skipped are reported."""
    if checkpoint_dir is None:
        return _Progress()
    state, _, skipped = load_latest_checkpoint(checkpoint_dir, map_location=device)
    progress = _Progress()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state, device)
        early = state.get("early") or {}
        # metrics.jsonl must list the epochs trained before the interruption as well
        progress = _Progress(epoch=int(state["epoch"]), step=int(state["step"]),
                             history=[EpochMetrics(**m) for m in state.get("history", [])],
                             best_score=early.get("best_accuracy"), best_epoch=early.get("best_epoch"),
                             bad_epochs=int(early.get("bad_epochs", 0)), best_state=state.get("best_model"))
    if state is not None or skipped:
        callbacks.on_resume(run=run, epoch=progress.epoch, skipped=skipped)
    return progress


def _validate(model: torch.nn.Module, val_set: ArrayDataset, teacher_val_logits: torch.Tensor | None,
              device: torch.device) -> tuple[float | None, float | None]:
    """(accuracy on the labelled validation rows, agreement with the teacher on all of them); None
    where there is no labelled row, or no teacher logits."""
    pred = predict_logits(model, val_set.x, device=device).argmax(1).cpu()
    labeled = val_set.labeled
    accuracy = None if not bool(labeled.any()) else (pred == val_set.y)[labeled].float().mean().item()
    agreement = (None if teacher_val_logits is None else
                 (pred == teacher_val_logits.cpu().argmax(1)).float().mean().item())
    return accuracy, agreement


def _make_optimizer(model: torch.nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.learning_rate, momentum=hp.momentum,
                               weight_decay=hp.weight_decay, nesterov=hp.momentum > 0)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")
