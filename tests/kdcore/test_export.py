"""The student file (safetensors + metadata) and the ONNX export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdcore.errors import FormatError, KDError
from kdcore.export import FORMAT, export_onnx, load_student, read_student_metadata, save_student
from kdcore.models import build_model, count_params


def randomise_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics, so eval-mode BN is not the identity."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", {"hidden_sizes": [16, 8], "dropout": 0.2}, input_shape=(3, 4), num_classes=5)


@pytest.fixture
def cnn1d() -> torch.nn.Module:
    torch.manual_seed(1)
    return randomise_batch_norm(build_model("cnn1d", {"channels": [4, 6]}, input_shape=(2, 24), num_classes=4))


@pytest.fixture
def cnn2d() -> torch.nn.Module:
    torch.manual_seed(2)
    return randomise_batch_norm(build_model("cnn2d", {"channels": [4, 8]}, input_shape=(1, 8, 8), num_classes=3))


def test_save_and_load_give_identical_outputs(tmp_path: Path, cnn1d: torch.nn.Module) -> None:
    path = tmp_path / "student.safetensors"
    digest = save_student(path, cnn1d)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()

    loaded = load_student(path)
    assert not loaded.training
    assert type(loaded) is type(cnn1d)
    assert (loaded.arch, loaded.arch_params, loaded.input_shape, loaded.num_classes) == (
        cnn1d.arch, cnn1d.arch_params, cnn1d.input_shape, cnn1d.num_classes)
    x = torch.randn(7, 2, 24)
    cnn1d.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), cnn1d(x))
    for name, tensor in cnn1d.state_dict().items():  # buffers too (BN running statistics)
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_metadata_round_trips(tmp_path: Path, mlp: torch.nn.Module) -> None:
    path = tmp_path / "student.safetensors"
    extra = {"metrics": {"accuracy": 0.91, "agreement": 0.95}, "job_id": "job_123",
             "standardizer": {"mean": torch.tensor([0.5, 1.5]), "std": np.array([1.0, 2.0])},
             "spec": {"hyperparameters": {"temperature": 4.0, "alpha": 0.3}}}
    save_student(path, mlp, metadata=extra)

    meta = read_student_metadata(path)
    assert meta["format"] == FORMAT == "kdcore.student/v1"
    assert meta["arch"] == "mlp"
    assert meta["arch_params"] == {"hidden_sizes": [16, 8], "dropout": 0.2}
    assert meta["input_shape"] == [3, 4]
    assert meta["num_classes"] == 5
    assert meta["parameters"] == count_params(mlp)
    assert meta["metrics"] == extra["metrics"]
    assert meta["job_id"] == "job_123"
    assert meta["standardizer"] == {"mean": [0.5, 1.5], "std": [1.0, 2.0]}
    assert meta["spec"] == extra["spec"]
    # The raw header: plain strings for format/arch, JSON for the rest (any safetensors reader).
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert raw["format"] == FORMAT and raw["arch"] == "mlp"
    assert json.loads(raw["input_shape"]) == [3, 4]


def test_reserved_metadata_keys_are_refused(tmp_path: Path, mlp: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_student(tmp_path / "s.safetensors", mlp, metadata={"arch": "resnet"})
    with pytest.raises(TypeError, match="job_id"):
        save_student(tmp_path / "s.safetensors", mlp, metadata={"job_id": object()})
    assert list(tmp_path.iterdir()) == []


def test_plain_safetensors_is_refused_clearly(tmp_path: Path, mlp: torch.nn.Module) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(path))
    with pytest.raises(FormatError, match="not a kdcore student file"):
        load_student(path)
    with pytest.raises(FormatError, match="not a kdcore student file"):
        read_student_metadata(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="not a safetensors file"):
        load_student(junk)


def test_weights_that_do_not_fit_the_metadata_are_refused(tmp_path: Path, mlp: torch.nn.Module) -> None:
    path = tmp_path / "student.safetensors"
    state = {k: v.contiguous() for k, v in mlp.state_dict().items()}
    state.pop("net.1.bias")
    meta = {"format": FORMAT, "arch": "mlp", "arch_params": json.dumps(mlp.arch_params),
            "input_shape": "[3, 4]", "num_classes": "5", "parameters": "0"}
    save_file(state, str(path), metadata=meta)
    with pytest.raises(FormatError, match="do not fit"):
        load_student(path)


def test_tied_weights_are_saved(tmp_path: Path, mlp: torch.nn.Module) -> None:
    # Two state-dict entries sharing storage: safetensors itself refuses those.
    mlp.net.extra = torch.nn.Linear(8, 8)
    mlp.net.extra2 = torch.nn.Linear(8, 8)
    mlp.net.extra2.weight = mlp.net.extra.weight
    path = tmp_path / "student.safetensors"
    save_student(path, mlp)
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("net.extra2.weight"), mlp.net.extra.weight.detach())


def test_save_is_atomic(tmp_path: Path, mlp: torch.nn.Module) -> None:
    path = tmp_path / "student.safetensors"
    save_student(path, mlp, metadata={"job_id": "a"})
    save_student(path, mlp, metadata={"job_id": "b"})  # replaces in place
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]
    assert read_student_metadata(path)["job_id"] == "b"


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d"])
def test_onnx_matches_torch(tmp_path: Path, request, name: str) -> None:
    model = request.getfixturevalue(name)
    model.train()  # export must use eval mode (dropout off, BN running stats) without changing ours
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path)

    assert model.training
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    model.eval()
    for batch in (1, 9):
        x = torch.randn(batch, *model.input_shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_onnx(path, x)
        assert got.shape == (batch, model.num_classes)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_onnx_export_leaves_the_global_rng_alone(tmp_path: Path, mlp: torch.nn.Module) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    export_onnx(mlp, tmp_path / "m.onnx")
    assert torch.equal(torch.rand(3), expected)


def test_onnx_mismatch_raises_and_writes_nothing(tmp_path: Path, mlp: torch.nn.Module, monkeypatch) -> None:
    import kdcore.export as export_module

    monkeypatch.setattr(export_module, "ONNX_TOLERANCE", -1.0)  # nothing can match: the check must fire
    with pytest.raises(KDError, match="does not reproduce PyTorch"):
        export_onnx(mlp, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unexportable_model_raises_and_writes_nothing(tmp_path: Path) -> None:
    class Unexportable(torch.nn.Module):
        input_shape = (1, 7, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # 7 → 5 is not a factor: the legacy exporter has no ONNX form for it.
            return torch.nn.functional.adaptive_avg_pool2d(x, 5).flatten(1)

    with pytest.raises(KDError, match="ONNX export of Unexportable failed"):
        export_onnx(Unexportable(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch, shape", [("mlp", (64,)), ("cnn1d", (40,)), ("lenet", (1, 9, 13)),
                                         ("cnn2d", (3, 8, 8)), ("resnet", (3, 8, 8))])
def test_every_architecture_exports_to_onnx_matching_torch(arch, shape, tmp_path):
    from kdcore.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, {}, input_shape=shape, num_classes=10)
    export_onnx(model, tmp_path / "m.onnx")  # raises when onnxruntime disagrees with PyTorch by > 1e-4
    assert (tmp_path / "m.onnx").stat().st_size > 0
