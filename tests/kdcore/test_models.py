"""The architecture registry: params resolution, shape checks, building, size and cost."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdcore.errors import SpecError
from kdcore.models import (
    ARCHITECTURES,
    build_model,
    check_input_shape,
    count_params,
    estimate_macs,
    resolve_arch_params,
)

# One valid per-sample input shape per architecture, kept small so the suite stays fast.
VALID = [
    ("mlp", (64,)),
    ("mlp", (1, 8, 8)),
    ("cnn1d", (40,)),
    ("cnn1d", (2, 16)),
    ("lenet", (1, 8, 8)),
    ("lenet", (3, 4, 4)),
    ("cnn2d", (1, 8, 8)),
    ("cnn2d", (3, 4, 5)),
    ("resnet", (3, 8, 8)),
    ("resnet8x4", (3, 8, 8)),
]


@pytest.fixture
def batch():
    def make(shape, n=3):
        return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))

    return make


def test_every_architecture_is_registered():
    assert set(ARCHITECTURES.names()) == {"mlp", "cnn1d", "lenet", "cnn2d", "resnet", "resnet8x4", "resnet32x4"}


@pytest.mark.parametrize("arch, shape", VALID)
def test_builds_and_returns_logits(arch, shape, batch):
    model = build_model(arch, None, input_shape=list(shape), num_classes=7)
    out = model(batch(shape))
    assert out.shape == (3, 7)
    assert out.dtype == torch.float32
    assert model.arch == arch
    assert model.input_shape == shape and isinstance(model.input_shape, tuple)
    assert model.num_classes == 7
    assert model.arch_params == resolve_arch_params(arch, None)
    json.dumps(model.arch_params)  # recorded in checkpoints: must serialise


def test_resnet32x4_is_bigger_than_resnet8x4(batch):
    small = build_model("resnet8x4", None, input_shape=(3, 32, 32), num_classes=10)
    big = build_model("resnet32x4", None, input_shape=(3, 32, 32), num_classes=10)
    with torch.no_grad():
        assert big.eval()(batch((3, 32, 32), n=2)).shape == (2, 10)
    assert count_params(big) > 3 * count_params(small)
    assert estimate_macs(big, (3, 32, 32)) > 3 * estimate_macs(small, (3, 32, 32))
    assert big.arch_params == {"depth": 32, "width": 4}


def test_resnet_stage_layout():
    model = build_model("resnet", {"depth": 14, "width": 2}, input_shape=(3, 8, 8), num_classes=10)
    stages = list(model.stages)
    assert [len(stage) for stage in stages] == [2, 2, 2]  # (14 - 2) / 6 blocks per stage
    assert [stage[-1].conv2.out_channels for stage in stages] == [32, 64, 128]  # 16w, 32w, 64w
    assert model.stem[0].out_channels == 32
    assert model.classifier.in_features == 128


def test_resnet20_has_the_papers_size():
    # He et al. report 0.27M parameters for ResNet-20 on CIFAR-10.
    model = build_model("resnet", None, input_shape=(3, 32, 32), num_classes=10)
    assert 0.26e6 < count_params(model) < 0.28e6


# --- params -------------------------------------------------------------------------------------


def test_defaults_are_filled_in():
    assert resolve_arch_params("mlp", None) == {"hidden_sizes": [128], "dropout": 0.0}
    assert resolve_arch_params("mlp", {"dropout": 0}) == {"hidden_sizes": [128], "dropout": 0.0}
    assert resolve_arch_params("cnn1d", {}) == {
        "channels": [32, 32],
        "kernel_size": 5,
        "batch_norm": True,
        "pool": "avg",
        "dropout": 0.0,
    }
    assert resolve_arch_params("cnn2d", {"batch_norm": False})["channels"] == [32, 64]
    assert resolve_arch_params("cnn2d", {})["kernel_size"] == 3
    assert resolve_arch_params("resnet", {}) == {"depth": 20, "width": 1}
    assert resolve_arch_params("resnet8x4", {}) == {"depth": 8, "width": 4}
    assert resolve_arch_params("resnet32x4", {"width": 2}) == {"depth": 32, "width": 2}


def test_resolved_params_are_copies():
    given = {"hidden_sizes": [16, 8]}
    resolved = resolve_arch_params("mlp", given)
    resolved["hidden_sizes"].append(4)
    assert given == {"hidden_sizes": [16, 8]}
    assert resolve_arch_params("mlp", None)["hidden_sizes"] == [128]


def test_unknown_param_names_it_and_the_known_ones():
    with pytest.raises(SpecError) as err:
        resolve_arch_params("mlp", {"hidden": [32]}, field="student.arch_params")
    assert err.value.field == "student.arch_params.hidden"
    assert "hidden_sizes" in err.value.message and "dropout" in err.value.message


@pytest.mark.parametrize(
    "arch, params, bad",
    [
        ("mlp", {"hidden_sizes": []}, "hidden_sizes"),
        ("mlp", {"hidden_sizes": 128}, "hidden_sizes"),
        ("mlp", {"hidden_sizes": [32, 0]}, "hidden_sizes"),
        ("mlp", {"hidden_sizes": [32.0]}, "hidden_sizes"),
        ("mlp", {"hidden_sizes": [True]}, "hidden_sizes"),
        ("mlp", {"hidden_sizes": [65537]}, "hidden_sizes"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("mlp", {"dropout": -0.1}, "dropout"),
        ("mlp", {"dropout": "0.1"}, "dropout"),
        ("cnn1d", {"kernel_size": 0}, "kernel_size"),
        ("cnn1d", {"pool": "mean"}, "pool"),
        ("cnn2d", {"batch_norm": 1}, "batch_norm"),
        ("cnn2d", {"channels": ["32"]}, "channels"),
        ("resnet", {"width": 0}, "width"),
        ("resnet", {"width": 17}, "width"),
        ("resnet", {"width": 2.0}, "width"),
    ],
)
def test_bad_param_values(arch, params, bad):
    with pytest.raises(SpecError) as err:
        resolve_arch_params(arch, params, field="student.arch_params")
    assert err.value.field == f"student.arch_params.{bad}"


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 56])
def test_resnet_accepts_cifar_depths(depth):
    assert resolve_arch_params("resnet", {"depth": depth})["depth"] == depth


@pytest.mark.parametrize("depth", [7, 10, 18, 44, 110, 20.0, "20", True])
def test_resnet_rejects_other_depths(depth):
    with pytest.raises(SpecError) as err:
        resolve_arch_params("resnet", {"depth": depth}, field="teacher.arch_params")
    assert err.value.field == "teacher.arch_params.depth"


def test_params_must_be_an_object():
    with pytest.raises(SpecError) as err:
        resolve_arch_params("mlp", [128], field="student.arch_params")
    assert err.value.field == "student.arch_params"


def test_unknown_arch_uses_the_sibling_arch_field():
    with pytest.raises(SpecError) as err:
        resolve_arch_params("transformer", {}, field="student.arch_params")
    assert err.value.field == "student.arch"
    assert "resnet8x4" in err.value.message
    with pytest.raises(SpecError) as err:
        build_model("transformer", None, input_shape=(4,), num_classes=2)
    assert err.value.field == "arch"
    with pytest.raises(SpecError) as err:
        check_input_shape("transformer", None, (4,), arch_field="teacher.arch")
    assert err.value.field == "teacher.arch"


# --- input shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, shape",
    [
        ("cnn1d", (3,)),
        ("cnn1d", (1, 8, 8)),
        ("lenet", (64,)),
        ("lenet", (8, 8)),
        ("lenet", (1, 3, 8)),
        ("cnn2d", (64,)),
        ("cnn2d", (1, 8, 3)),
        ("resnet", (3, 4, 4)),
        ("resnet", (3, 32)),
        ("resnet32x4", (3, 7, 32)),
    ],
)
def test_incompatible_input_shapes(arch, shape):
    with pytest.raises(SpecError) as err:
        check_input_shape(arch, None, shape, field="dataset.input_shape")
    assert err.value.field == "dataset.input_shape"
    with pytest.raises(SpecError) as err:
        build_model(arch, None, input_shape=shape, num_classes=10)
    assert err.value.field == "input_shape"


@pytest.mark.parametrize("arch, shape", VALID + [("mlp", (5,)), ("resnet32x4", (3, 32, 32))])
def test_compatible_input_shapes(arch, shape):
    check_input_shape(arch, None, shape)


@pytest.mark.parametrize("shape", [(), (0,), (-1, 4), (4.0,), "64", 64, (True,)])
def test_malformed_input_shapes(shape):
    with pytest.raises(SpecError) as err:
        check_input_shape("mlp", None, shape)
    assert err.value.field == "input_shape"


def test_shape_check_resolves_params_first():
    with pytest.raises(SpecError) as err:
        check_input_shape("mlp", {"depth": 3}, (4,), params_field="student.arch_params")
    assert err.value.field == "student.arch_params.depth"


def test_num_classes_is_checked():
    for bad in (0, 1, 2.0, True):
        with pytest.raises(SpecError) as err:
            build_model("mlp", None, input_shape=(4,), num_classes=bad)
        assert err.value.field == "num_classes"


# --- size, cost and determinism -----------------------------------------------------------------


def test_mlp_param_count_by_hand():
    model = build_model("mlp", {"hidden_sizes": [32]}, input_shape=(64,), num_classes=10)
    assert count_params(model) == 64 * 32 + 32 + 32 * 10 + 10


def test_count_params_includes_frozen_parameters():
    model = build_model("mlp", {"hidden_sizes": [32]}, input_shape=(64,), num_classes=10)
    for p in model.parameters():
        p.requires_grad_(False)
    assert count_params(model) == 64 * 32 + 32 + 32 * 10 + 10


def test_mlp_macs_are_the_linear_layers():
    model = build_model("mlp", {"hidden_sizes": [32, 16]}, input_shape=(2, 4, 8), num_classes=5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert estimate_macs(model, (2, 4, 8)) == sum(m.in_features * m.out_features for m in linears)
    assert estimate_macs(model, (2, 4, 8)) == 64 * 32 + 32 * 16 + 16 * 5


def test_conv_macs_by_hand():
    # cnn1d on (1, 10): conv 1→4 k3 over 10 positions, conv 4→2 k3 over 10, linear 2→3.
    model = build_model(
        "cnn1d", {"channels": [4, 2], "kernel_size": 3}, input_shape=(10,), num_classes=3
    )
    assert estimate_macs(model, (10,)) == 10 * 4 * 1 * 3 + 10 * 2 * 4 * 3 + 2 * 3


def test_estimate_macs_restores_training_mode():
    model = build_model("cnn2d", None, input_shape=(1, 8, 8), num_classes=10)
    model.train()
    model.features[1].eval()
    estimate_macs(model, (1, 8, 8))
    assert model.training
    assert not model.features[1].training
    assert model.features[0].training


@pytest.mark.parametrize("arch, shape", [("mlp", (64,)), ("cnn1d", (40,)), ("lenet", (1, 8, 8)), ("resnet", (3, 8, 8))])
def test_build_is_deterministic_under_seed(arch, shape):
    torch.manual_seed(123)
    a = build_model(arch, None, input_shape=shape, num_classes=10)
    torch.manual_seed(123)
    b = build_model(arch, None, input_shape=shape, num_classes=10)
    c = build_model(arch, None, input_shape=shape, num_classes=10)  # RNG moved on: not reseeded inside
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_dropout_is_used_when_asked():
    model = build_model("mlp", {"hidden_sizes": [8], "dropout": 0.5}, input_shape=(4,), num_classes=2)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    plain = build_model("mlp", {"hidden_sizes": [8]}, input_shape=(4,), num_classes=2)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_cnn_options_change_the_module():
    no_bn = build_model("cnn2d", {"batch_norm": False}, input_shape=(1, 8, 8), num_classes=10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    max_pool = build_model("cnn1d", {"pool": "max"}, input_shape=(40,), num_classes=10)
    assert isinstance(max_pool.pool, nn.AdaptiveMaxPool1d)
