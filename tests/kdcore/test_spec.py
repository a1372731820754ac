"""The distillation spec (kdcore.spec) and the learning-rate schedules (kdcore.schedules)."""

from __future__ import annotations

import copy
import math
from dataclasses import fields

import pytest

from kdcore.errors import SpecError
from kdcore.schedules import lr_at
from kdcore.spec import (
    FIELD_HELP,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    DatasetSpec,
    DistillSpec,
    Hyperparameters,
    ResourcesSpec,
    StudentSpec,
    TeacherSpec,
)

MINIMAL = {"teacher": {"path": "teacher.safetensors", "arch": "mlp"}}


def _spec(**sections) -> dict:
    """MINIMAL with some sections merged in (a value of None deletes the key)."""
    data = copy.deepcopy(MINIMAL)
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def _field_of(data: dict) -> str | None:
    with pytest.raises(SpecError) as info:
        DistillSpec.from_dict(data)
    return info.value.field


# ---- defaults ----

def test_from_dict_fills_every_default_and_to_dict_echoes_them():
    spec = DistillSpec.from_dict(MINIMAL)
    d = spec.to_dict()
    assert d == {
        "teacher": {"path": "teacher.safetensors", "arch": "mlp", "arch_params": {}},
        "student": {"arch": "mlp", "arch_params": {}, "init_path": None},
        "dataset": {"builtin": "digits", "train_path": None, "validation_path": None, "test_path": None,
                    "validation_fraction": 0.1, "standardize": False, "unlabeled_paths": [],
                    "labels_per_class": None},
        "hyperparameters": {
            "temperature": 4.0, "alpha": 0.3, "loss": "forward_kl", "epochs": 10, "batch_size": 128,
            "learning_rate": 1e-3, "weight_decay": 0.01, "optimizer": "adamw", "momentum": 0.9,
            "schedule": "cosine", "step_size": 30, "gamma": 0.1, "grad_clip_norm": None, "seed": 0, "repeats": 1,
            "augment": "none", "noise_std": 0.1, "shift_max": 4, "mixup_alpha": 0.4, "device": "auto",
            "early_stopping_patience": None, "restore_best": False,
        },
        "baseline": True,
        "metadata": {},
        "resources": {"device": "cpu", "gpus": 0, "processes": 1},
    }
    # Every dataclass field is echoed, so nothing the trainer uses is left implicit.
    for section, cls in (("teacher", TeacherSpec), ("student", StudentSpec), ("dataset", DatasetSpec),
                         ("hyperparameters", Hyperparameters), ("resources", ResourcesSpec)):
        assert set(d[section]) == {f.name for f in fields(cls)}
    # The echo is itself a valid spec that resolves to the same thing.
    assert DistillSpec.from_dict(d).to_dict() == d


def test_given_values_are_kept_and_ints_become_floats_where_floats_are_expected():
    spec = DistillSpec.from_dict(_spec(hyperparameters={"temperature": 2, "alpha": 1, "epochs": 3,
                                                        "grad_clip_norm": 1},
                                       dataset={"builtin": None, "train_path": "train.npz",
                                                "validation_path": "val.npz"},
                                       baseline=False, metadata={"owner": "me"}))
    hp = spec.hyperparameters
    assert (hp.temperature, hp.alpha, hp.epochs, hp.grad_clip_norm) == (2.0, 1.0, 3, 1.0)
    assert isinstance(hp.temperature, float) and isinstance(hp.epochs, int)
    assert spec.dataset.train_path == "train.npz" and spec.dataset.builtin is None
    assert spec.baseline is False and spec.metadata == {"owner": "me"}


# ---- errors name the field ----

@pytest.mark.parametrize("hyperparameters, field", [
    ({"temperature": 0}, "hyperparameters.temperature"),
    ({"temperature": -1.5}, "hyperparameters.temperature"),
    ({"temperature": MAX_TEMPERATURE + 1}, "hyperparameters.temperature"),
    ({"alpha": -0.01}, "hyperparameters.alpha"),
    ({"alpha": 1.01}, "hyperparameters.alpha"),
    ({"alpha": 2}, "hyperparameters.alpha"),
    ({"epochs": 0}, "hyperparameters.epochs"),
    ({"batch_size": 0}, "hyperparameters.batch_size"),
    ({"learning_rate": 0}, "hyperparameters.learning_rate"),
    ({"gamma": 0}, "hyperparameters.gamma"),
    ({"grad_clip_norm": 0}, "hyperparameters.grad_clip_norm"),
    ({"seed": -1}, "hyperparameters.seed"),
    ({"loss": "kl_divergence"}, "hyperparameters.loss"),
    ({"optimizer": "adam"}, "hyperparameters.optimizer"),
    ({"schedule": "linear"}, "hyperparameters.schedule"),
    ({"augment": "cutout"}, "hyperparameters.augment"),
    ({"augment": ["shift", "shift"]}, "hyperparameters.augment"),
    ({"augment": [1]}, "hyperparameters.augment"),
    ({"shift_max": 0}, "hyperparameters.shift_max"),
    ({"mixup_alpha": 0}, "hyperparameters.mixup_alpha"),
    ({"device": "tpu"}, "hyperparameters.device"),
    # A bool is not a number (JSON true would otherwise pass as 1).
    ({"temperature": True}, "hyperparameters.temperature"),
    ({"epochs": True}, "hyperparameters.epochs"),
    ({"epochs": 2.5}, "hyperparameters.epochs"),
    ({"alpha": "0.5"}, "hyperparameters.alpha"),
    ({"temperature": None}, "hyperparameters.temperature"),
    ({"learning_rate": float("nan")}, "hyperparameters.learning_rate"),
    ({"temprature": 4}, "hyperparameters.temprature"),
])
def test_bad_hyperparameters_raise_spec_error_naming_the_field(hyperparameters, field):
    assert _field_of(_spec(hyperparameters=hyperparameters)) == field


@pytest.mark.parametrize("temperature", [1e-300, 1e-30, 0.01, 0.0999, MAX_TEMPERATURE * 1.001, 1e300,
                                         float("inf"), float("nan"), [4.0, 1e-300], [1e-300]])
def test_a_temperature_outside_its_limits_is_refused_naming_both(temperature):
    """T = 1e-300 divides the logits by ~0: z/T is inf, the loss NaN, the job diverged (issue 16
    item 9). Below MIN_TEMPERATURE the soft targets are one-hot in float32 and T² shrinks the soft
    gradient T·(Q - P) out of scale (docs/KD_MATH.md, facts 5 and 7); above MAX_TEMPERATURE they are uniform."""
    with pytest.raises(SpecError) as info:
        DistillSpec.from_dict(_spec(hyperparameters={"temperature": temperature}))
    assert info.value.field == "hyperparameters.temperature"
    finite = all(math.isfinite(t) for t in (temperature if isinstance(temperature, list) else [temperature]))
    reason = f"between {MIN_TEMPERATURE:g} (MIN_TEMPERATURE) and {MAX_TEMPERATURE:g} (MAX_TEMPERATURE)"
    assert (reason if finite else "must be finite") in str(info.value)


@pytest.mark.parametrize("temperature", [MIN_TEMPERATURE, 0.5, 1, 4, 20, MAX_TEMPERATURE, [MIN_TEMPERATURE, MAX_TEMPERATURE]])
def test_temperatures_within_the_limits_are_accepted(temperature):
    hp = DistillSpec.from_dict(_spec(hyperparameters={"temperature": temperature})).hyperparameters
    assert hp.temperature == temperature


def test_range_errors_say_what_is_allowed():
    with pytest.raises(SpecError, match="between 0 and 1") as info:
        DistillSpec.from_dict(_spec(hyperparameters={"alpha": 2}))
    assert str(info.value).startswith("hyperparameters.alpha: ")
    with pytest.raises(SpecError, match="forward_kl") as info:
        DistillSpec.from_dict(_spec(hyperparameters={"loss": "nope"}))


@pytest.mark.parametrize("data, field", [
    (_spec(colour="blue"), "colour"),
    (_spec(teacher={"file": "x"}), "teacher.file"),
    (_spec(student={"hidden": [8]}), "student.hidden"),
    (_spec(dataset={"name": "digits"}), "dataset.name"),
    (_spec(dataset={"builtin": "digits", "train_path": "train.npz"}), "dataset"),
    (_spec(dataset={"builtin": None}), "dataset"),
    (_spec(dataset={"builtin": "digits", "test_path": "test.npz"}), "dataset.builtin"),
    (_spec(dataset={"builtin": "digits", "validation_fraction": 1.0}), "dataset.validation_fraction"),
    (_spec(dataset={"standardize": 1}), "dataset.standardize"),
    (_spec(teacher={"path": None}), "teacher.path"),
    (_spec(teacher=None), "teacher.path"),
    (_spec(teacher="teacher.onnx"), "teacher"),
    (_spec(student={"arch_params": [64]}), "student.arch_params"),
    (_spec(baseline="yes"), "baseline"),
    (_spec(metadata=[1, 2]), "metadata"),
])
def test_structural_errors_name_the_field(data, field):
    assert _field_of(data) == field


def test_a_spec_that_is_not_an_object_is_refused():
    with pytest.raises(SpecError, match="JSON object"):
        DistillSpec.from_dict([MINIMAL])


# ---- FIELD_HELP ----

def _all_field_names() -> set[str]:
    names = {f"{section}.{f.name}" for section, cls in (
        ("teacher", TeacherSpec), ("student", StudentSpec), ("dataset", DatasetSpec),
        ("hyperparameters", Hyperparameters), ("resources", ResourcesSpec)) for f in fields(cls)}
    return names | {"baseline", "metadata"}


def test_every_spec_field_has_help_and_no_help_is_stale():
    names = _all_field_names()
    assert names - set(FIELD_HELP) == set(), "fields without help"
    assert set(FIELD_HELP) - names == set(), "help for fields that no longer exist"
    assert all(isinstance(text, str) and text.strip() for text in FIELD_HELP.values())


# ---- lr_at ----

BASE = 0.1


def test_cosine_starts_at_base_halves_midway_and_ends_at_zero():
    kw = dict(base_lr=BASE, schedule="cosine", total_steps=100, steps_per_epoch=10)
    assert lr_at(0, **kw) == BASE
    assert lr_at(50, **kw) == pytest.approx(BASE / 2, abs=1e-15)
    assert lr_at(100, **kw) == 0.0
    assert lr_at(150, **kw) == 0.0  # clamped past the end
    assert lr_at(25, **kw) == pytest.approx(BASE * 0.5 * (1 + math.cos(math.pi / 4)))
    rates = [lr_at(s, **kw) for s in range(101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # monotone decay


def test_step_schedule_decays_by_gamma_every_step_size_epochs():
    kw = dict(base_lr=BASE, schedule="step", total_steps=1000, steps_per_epoch=10, step_size=3, gamma=0.5)
    # epochs 0-2 -> base, 3-5 -> base/2, 6-8 -> base/4
    assert lr_at(0, **kw) == BASE
    assert lr_at(29, **kw) == BASE  # last step of epoch 2
    assert lr_at(30, **kw) == pytest.approx(BASE * 0.5)
    assert lr_at(59, **kw) == pytest.approx(BASE * 0.5)
    assert lr_at(60, **kw) == pytest.approx(BASE * 0.25)


def test_constant_schedule_and_unknown_schedule():
    for step in (0, 7, 10_000):
        assert lr_at(step, base_lr=BASE, schedule="constant", total_steps=10, steps_per_epoch=1) == BASE
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, base_lr=BASE, schedule="warmup", total_steps=10, steps_per_epoch=1)


# ---- resources ----

@pytest.mark.parametrize("given, resolved", [
    (None, {"device": "cpu", "gpus": 0, "processes": 1}),
    ({"processes": 2}, {"device": "cpu", "gpus": 0, "processes": 2}),
    ({"device": "cuda"}, {"device": "cuda", "gpus": 1, "processes": 1}),
    ({"device": "cuda", "gpus": 4}, {"device": "cuda", "gpus": 4, "processes": 4}),
])
def test_resources_defaults(given, resolved):
    data = _spec() if given is None else _spec(resources=given)
    assert DistillSpec.from_dict(data).to_dict()["resources"] == resolved


def test_a_spec_that_says_cuda_only_in_hyperparameters_asks_for_a_gpu():
    spec = DistillSpec.from_dict(_spec(hyperparameters={"device": "cuda"}))
    assert (spec.resources.device, spec.resources.gpus) == ("cuda", 1)


@pytest.mark.parametrize("resources, hyper, field", [
    ({"device": "tpu"}, {}, "resources.device"),
    ({"gpus": 1}, {}, "resources.gpus"),
    ({"device": "cuda", "gpus": 0}, {}, "resources.gpus"),
    ({"device": "cuda", "gpus": 9}, {}, "resources.gpus"),
    ({"device": "cuda", "gpus": 2, "processes": 1}, {}, "resources.processes"),
    ({"processes": 0}, {}, "resources.processes"),
    ({"processes": 9}, {}, "resources.processes"),
    ({"gpus": "2"}, {}, "resources.gpus"),
    ({"nodes": 2}, {}, "resources.nodes"),
    ({"processes": 2}, {"augment": "noise"}, "resources.processes"),
    ({"device": "cpu"}, {"device": "cuda"}, "hyperparameters.device"),
])
def test_bad_resources_name_the_field(resources, hyper, field):
    assert _field_of(_spec(resources=resources, hyperparameters=hyper)) == field


# ---- every failing field at once ----

def test_every_failing_field_is_reported_at_once_in_spec_order():
    with pytest.raises(SpecError) as info:
        DistillSpec.from_dict(_spec(hyperparameters={"alpha": 2.0, "epochs": 0, "batch_size": 0,
                                                     "optimizer": "lbfgs", "augment": ["rotate"]},
                                    dataset={"builtin": "digits", "validation_fraction": 1.5},
                                    resources={"device": "tpu"}))
    fields_found = [f for f, _ in info.value.errors]
    assert fields_found == ["hyperparameters.alpha", "hyperparameters.epochs", "hyperparameters.batch_size",
                            "hyperparameters.augment", "hyperparameters.optimizer",
                            "dataset.validation_fraction", "resources.device"]
    assert info.value.field == "hyperparameters.alpha"  # the first is the error's own


def test_one_failing_field_is_one_error():
    with pytest.raises(SpecError) as info:
        DistillSpec.from_dict(_spec(hyperparameters={"epochs": 0}))
    assert info.value.errors == [("hyperparameters.epochs", info.value.message)]
