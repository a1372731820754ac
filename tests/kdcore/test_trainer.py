"""The training loop (kdcore.trainer): bit-identical resume, the teacher-logit cache, callbacks,
cancellation, damaged checkpoints and non-finite losses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.teachers import train_digits_mlp
from kdcore.checkpoint import list_checkpoints
from kdcore.data import ArrayDataset, IndexBatcher, load_builtin, split_train_val
from kdcore.models import build_model
from kdcore.spec import Hyperparameters
from kdcore.teacher_logit_cache import can_cache, compute_teacher_logits
from kdcore.teachers import ModuleTeacher
from kdcore.trainer import Callbacks, EpochMetrics, StepInfo, Stopped, train

CPU = torch.device("cpu")
IN, C = (12,), 4


def _hp(**overrides) -> Hyperparameters:
    base = dict(epochs=4, batch_size=16, learning_rate=1e-2, seed=3, device="cpu")
    return dataclasses.replace(Hyperparameters(), **{**base, **overrides})


@pytest.fixture(scope="module")
def data() -> tuple[ArrayDataset, ArrayDataset]:
    """100 training and 30 validation samples of a learnable 4-class problem (6.25 -> 7 steps/epoch)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(130, *IN, generator=g)
    y = (x[:, :C] * torch.tensor([1.0, 2.0, 3.0, 4.0])).argmax(1)
    ds = ArrayDataset(x, y, C)
    return ds.subset(torch.arange(100)), ds.subset(torch.arange(100, 130))


@pytest.fixture(scope="module")
def teacher() -> ModuleTeacher:
    torch.manual_seed(123)
    module = build_model("mlp", {"hidden_sizes": [24]}, input_shape=IN, num_classes=C)
    return ModuleTeacher(module, input_shape=IN, num_classes=C)


def _student(hp: Hyperparameters, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(hp.seed)
    return build_model("mlp", {"hidden_sizes": [20], "dropout": dropout}, input_shape=IN, num_classes=C)


def _run(model, data, teacher, hp, *, cached=True, **kw):
    train_set, val_set = data
    teacher_kw = ({"teacher_train_logits": compute_teacher_logits(teacher, train_set.x)} if cached
                  else {"live_teacher": teacher})
    return train(model, train_set=train_set, val_set=val_set, hp=hp, device=CPU,
                 teacher_val_logits=compute_teacher_logits(teacher, val_set.x), **teacher_kw, **kw)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


class Recorder(Callbacks):
    def __init__(self, stop_after_checkpoint: int | None = None):
        self.steps: list[StepInfo] = []
        self.epochs: list[EpochMetrics] = []
        self.checkpoints = []
        self.resumes = []
        self.stop_after_checkpoint = stop_after_checkpoint

    def on_step(self, info):
        self.steps.append(info)

    def on_epoch_end(self, metrics):
        self.epochs.append(metrics)

    def on_checkpoint(self, info):
        self.checkpoints.append(info)

    def on_resume(self, *, run, epoch, skipped):
        self.resumes.append((run, epoch, skipped))

    def should_stop(self):
        return self.stop_after_checkpoint is not None and any(
            c.epoch == self.stop_after_checkpoint for c in self.checkpoints)


class CountingTeacher:
    """A teacher that counts (and records the inputs of) its `logits` calls."""

    def __init__(self, inner: ModuleTeacher):
        self.inner = inner
        self.num_classes, self.input_shape = inner.num_classes, inner.input_shape
        self.deterministic, self.needs_indices = inner.deterministic, inner.needs_indices
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def logits(self, x, indices=None):
        self.calls.append((x.clone(), None if indices is None else indices.clone()))
        return self.inner.logits(x, indices)


# ---- (a) resume ----

@pytest.mark.parametrize("variant", ["cached", "dropout_noise_live"])
def test_interrupted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, data, teacher, variant):
    live = variant == "dropout_noise_live"
    hp = _hp(augment="noise", noise_std=0.3) if live else _hp()
    dropout = 0.3 if live else 0.0

    full = _student(hp, dropout)
    full_result = _run(full, data, teacher, hp, cached=not live, checkpoint_dir=tmp_path / "full")

    # Interrupted: stop as soon as epoch 2's checkpoint is on disk.
    first = _student(hp, dropout)
    rec = Recorder(stop_after_checkpoint=2)
    with pytest.raises(Stopped):
        _run(first, data, teacher, hp, cached=not live, checkpoint_dir=tmp_path / "resumed", callbacks=rec)
    assert [c.epoch for c in rec.checkpoints] == [1, 2]
    assert len(rec.steps) == 2 * 7  # no step of epoch 3 ran

    # A new process: fresh model from the same seed, and a global RNG somewhere else entirely.
    resumed = _student(hp, dropout)
    torch.manual_seed(987654)
    rec2 = Recorder()
    result = _run(resumed, data, teacher, hp, cached=not live, checkpoint_dir=tmp_path / "resumed", callbacks=rec2)
    assert rec2.resumes == [("student", 2, [])]
    assert result.resumed_from_epoch == 2 and result.epochs_run == 2
    assert [m.epoch for m in rec2.epochs] == [3, 4]
    assert rec2.steps[0].step == 15  # step numbering continues

    _assert_same_state(full, resumed)
    # The history spans the whole run (it feeds metrics.jsonl), with the same numbers.
    def numbers(history):
        return [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in history]
    assert [m.epoch for m in result.history] == [1, 2, 3, 4]
    assert numbers(result.history) == numbers(full_result.history)
    assert not _equal_to_fresh(resumed, hp, dropout)  # training did change the weights


def _equal_to_fresh(model, hp, dropout) -> bool:
    fresh = _student(hp, dropout)
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path, data, teacher):
    hp = _hp(epochs=2)
    done = _student(hp)
    _run(done, data, teacher, hp, checkpoint_dir=tmp_path)
    again = _student(hp)
    rec = Recorder()
    result = _run(again, data, teacher, hp, checkpoint_dir=tmp_path, callbacks=rec)
    assert result.epochs_run == 0 and rec.steps == [] and rec.resumes == [("student", 2, [])]
    assert [m.epoch for m in result.history] == [1, 2]
    _assert_same_state(done, again)


# ---- (b) the teacher-logit cache ----

def test_cached_teacher_is_never_called_while_training(data, teacher):
    counting = CountingTeacher(teacher)
    hp = _hp(epochs=2)
    assert can_cache(counting, hp)
    cached = compute_teacher_logits(counting, data[0].x)
    counting.calls.clear()
    train(_student(hp), train_set=data[0], val_set=data[1], hp=hp, device=CPU,
          teacher_train_logits=cached, live_teacher=counting)
    assert counting.calls == []


def test_with_noise_augmentation_the_teacher_runs_live_on_every_augmented_batch(data, teacher):
    counting = CountingTeacher(teacher)
    hp = _hp(epochs=2, augment="noise", noise_std=0.5)
    assert not can_cache(counting, hp)
    rec = Recorder()
    train(_student(hp), train_set=data[0], val_set=data[1], hp=hp, device=CPU, live_teacher=counting, callbacks=rec)
    steps = len(IndexBatcher(100, hp.batch_size)) * hp.epochs
    assert len(counting.calls) == len(rec.steps) == steps
    # It sees the noisy batch the student sees, not the clean rows.
    x, idx = counting.calls[0]
    assert idx is not None and x.shape == data[0].x[idx].shape
    assert not torch.equal(x, data[0].x[idx])
    assert (x - data[0].x[idx]).std().item() == pytest.approx(0.5, rel=0.3)


def test_a_non_deterministic_teacher_is_not_cached(teacher):
    counting = CountingTeacher(teacher)
    counting.deterministic = False
    assert not can_cache(counting, _hp())


# ---- (c) alpha = 1 and the baseline are plain cross-entropy ----

def test_alpha_one_is_plain_cross_entropy_and_the_baseline_has_no_soft_term(data, teacher):
    hp = _hp(epochs=2, alpha=1.0)
    distilled, baseline = _student(hp), _student(hp)
    _run(distilled, data, teacher, hp)
    rec = Recorder()
    result = train(baseline, train_set=data[0], val_set=data[1], hp=hp, run="baseline", device=CPU, callbacks=rec)
    for a, b in zip(distilled.state_dict().values(), baseline.state_dict().values()):
        assert torch.equal(a, b)
    assert all(m.train_soft == 0 and m.train_loss == m.train_hard for m in result.history)
    assert all(s.soft == 0 and s.run == "baseline" for s in rec.steps)
    assert all(m.val_agreement is None for m in result.history)  # no teacher logits given

    # And alpha < 1 really does use the teacher.
    hp_kd = _hp(epochs=2, alpha=0.3)
    kd = _student(hp_kd)
    kd_result = _run(kd, data, teacher, hp_kd)
    assert all(m.train_soft > 0 for m in kd_result.history)
    assert not torch.equal(kd.state_dict()["net.1.weight"], baseline.state_dict()["net.1.weight"])


# ---- (d) cancellation ----

class StopAtStep(Callbacks):
    def __init__(self, model, at: int):
        self.model, self.at, self.done = model, at, 0
        self.snapshot = None

    def on_step(self, info):
        self.done = info.step
        if info.step == self.at:
            self.snapshot = {k: v.clone() for k, v in self.model.state_dict().items()}

    def should_stop(self):
        return self.done >= self.at


def test_should_stop_raises_stopped_before_any_further_optimizer_step(data, teacher):
    hp = _hp()
    model = _student(hp)
    cb = StopAtStep(model, at=3)
    with pytest.raises(Stopped, match="stopped at epoch 1, step 3"):
        _run(model, data, teacher, hp, callbacks=cb)
    assert cb.done == 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, cb.snapshot[key]), key


def test_should_stop_at_once_leaves_the_model_untouched(data, teacher):
    hp = _hp()
    model = _student(hp)
    cb = StopAtStep(model, at=0)
    with pytest.raises(Stopped):
        _run(model, data, teacher, hp, callbacks=cb)
    assert _equal_to_fresh(model, hp, 0.0)


# ---- (e) callbacks ----

def test_callbacks_report_every_step_epoch_and_checkpoint(tmp_path, data, teacher):
    hp = _hp(epochs=3)
    rec = Recorder()
    result = _run(_student(hp), data, teacher, hp, callbacks=rec, checkpoint_dir=tmp_path)
    per_epoch = len(IndexBatcher(100, hp.batch_size))
    steps = per_epoch * hp.epochs
    assert per_epoch == 7
    assert [s.step for s in rec.steps] == list(range(1, steps + 1))
    assert all(s.steps == steps and s.run == "student" for s in rec.steps)
    assert [s.epoch for s in rec.steps] == [e for e in range(3) for _ in range(per_epoch)]
    assert rec.steps[0].lr == hp.learning_rate  # cosine starts at the base rate
    assert [m.epoch for m in rec.epochs] == [1, 2, 3]
    assert all(m.epochs == 3 and 0 <= m.val_accuracy <= 1 and m.val_agreement is not None for m in rec.epochs)
    assert rec.epochs == result.history
    assert [c.epoch for c in rec.checkpoints] == [1, 2, 3]
    assert rec.checkpoints[-1].path.exists() and rec.resumes == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-00002.kdckpt", "epoch-00003.kdckpt"]


def test_without_checkpoint_dir_nothing_is_checkpointed(data, teacher):
    hp = _hp(epochs=2)
    rec = Recorder()
    _run(_student(hp), data, teacher, hp, callbacks=rec)
    assert rec.checkpoints == [] and len(rec.epochs) == 2


# ---- (f) damaged checkpoints ----

def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, data, teacher):
    hp = _hp(epochs=3)
    reference = _student(hp)
    _run(reference, data, teacher, hp, checkpoint_dir=tmp_path / "reference")

    _run(_student(hp), data, teacher, hp, checkpoint_dir=tmp_path / "run")
    newest = tmp_path / "run" / "epoch-00003.kdckpt"
    newest.write_bytes(newest.read_bytes()[:-100])

    resumed = _student(hp)
    rec = Recorder()
    result = _run(resumed, data, teacher, hp, checkpoint_dir=tmp_path / "run", callbacks=rec)
    assert len(rec.resumes) == 1
    run, epoch, skipped = rec.resumes[0]
    assert (run, epoch) == ("student", 2)
    assert [path for path, _ in skipped] == [newest]
    assert "truncated" in skipped[0][1]
    assert result.resumed_from_epoch == 2 and [m.epoch for m in rec.epochs] == [3]
    _assert_same_state(reference, resumed)  # epoch 3 was redone, identically
    assert newest.exists() and [c.epoch for c in rec.checkpoints] == [3]


def test_when_every_checkpoint_is_damaged_the_run_starts_over_and_says_so(tmp_path, data, teacher):
    hp = _hp(epochs=1)
    _run(_student(hp), data, teacher, hp, checkpoint_dir=tmp_path)
    only = tmp_path / "epoch-00001.kdckpt"
    only.write_bytes(b"garbage")
    rec = Recorder()
    result = _run(_student(hp), data, teacher, hp, checkpoint_dir=tmp_path, callbacks=rec)
    assert rec.resumes and rec.resumes[0][:2] == ("student", 0) and rec.resumes[0][2][0][0] == only
    assert result.resumed_from_epoch == 0 and result.epochs_run == 1


# ---- (g) non-finite losses ----

def test_a_nan_loss_raises_floating_point_error_with_advice(data, teacher):
    hp = _hp(epochs=1)
    train_set, val_set = data
    huge = ArrayDataset(torch.full_like(train_set.x, 3e38), train_set.y, C)
    with pytest.raises(FloatingPointError, match=r"student: the loss became nan.*lower the learning rate"):
        train(_student(hp), train_set=huge, val_set=val_set, hp=hp, device=CPU)


def test_a_diverging_learning_rate_raises_floating_point_error(data):
    hp = _hp(epochs=20, learning_rate=10.0, optimizer="sgd", schedule="constant", weight_decay=0.0)
    train_set, val_set = data
    loud = ArrayDataset(train_set.x * 1e6, train_set.y, C)
    with pytest.raises(FloatingPointError, match="grad_clip_norm"):
        train(_student(hp), train_set=loud, val_set=val_set, hp=hp, run="baseline", device=CPU)


# ---- (h) it learns ----

def test_distillation_on_digits_beats_chance(tmp_path):
    parts = load_builtin("digits")
    train_set, val_set = split_train_val(parts["train"], fraction=0.2, seed=0)
    teacher_module = train_digits_mlp([64], steps=50, train=train_set)
    digits_teacher = ModuleTeacher(teacher_module, input_shape=(64,), num_classes=10)

    hp = dataclasses.replace(Hyperparameters(), epochs=4, batch_size=64, learning_rate=1e-2, device="cpu")
    torch.manual_seed(hp.seed)
    student = build_model("mlp", {"hidden_sizes": [32]}, input_shape=(64,), num_classes=10)
    result = train(student, train_set=train_set, val_set=val_set, hp=hp, device=CPU,
                   teacher_train_logits=compute_teacher_logits(digits_teacher, train_set.x),
                   teacher_val_logits=compute_teacher_logits(digits_teacher, val_set.x))
    last = result.history[-1]
    assert last.val_accuracy > 0.5  # chance is 0.1
    assert last.val_agreement > 0.5
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert not student.training  # left in eval mode
