"""export_onnx reuses the traced graph of an architecture it exported before, with the new weights
put in, and still checks every export with onnxruntime."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import kdcore.export as export_module
from kdcore.data import Standardizer
from kdcore.errors import KDError
from kdcore.export import export_onnx
from kdcore.models import build_model
from tests.kdcore.test_export import randomise_batch_norm


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch) -> OrderedDict:
    cache: OrderedDict = OrderedDict()
    monkeypatch.setattr(export_module, "_graphs", cache)
    return cache


@pytest.fixture
def traces(monkeypatch) -> list:
    """Each call of torch's exporter, appended (the exporter still runs)."""
    calls: list = []
    real = torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


def mlp(seed: int, hidden=(16, 8), shape=(3, 4)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden_sizes": list(hidden), "dropout": 0.2}, input_shape=shape, num_classes=5)


def standardizer(seed: int, shape=(3, 4)) -> Standardizer:
    return Standardizer.fit(torch.randn((50, *shape), generator=torch.Generator().manual_seed(seed)) * 3 + 1)


def assert_reproduces(path: Path, model: torch.nn.Module, scaler: Standardizer | None = None) -> None:
    """The file is a valid model and gives `model`'s logits (behind `scaler`) on a fresh batch."""
    onnx.checker.check_model(onnx.load(str(path)))
    x = torch.randn(9, *model.input_shape) * 3 + 1
    model = model.eval()
    with torch.no_grad():
        expected = model(scaler.apply(x) if scaler is not None else x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scaled", [False, True])
def test_second_export_of_an_architecture_reuses_the_graph(tmp_path, traces, empty_cache, scaled) -> None:
    first, second = mlp(0), mlp(1)
    scaler_a, scaler_b = (standardizer(0), standardizer(1)) if scaled else (None, None)
    export_onnx(first, tmp_path / "a.onnx", standardizer=scaler_a, metadata={"job_id": "a"})
    torch.manual_seed(5)
    expected_rng = torch.rand(3)
    torch.manual_seed(5)
    second.train()
    export_onnx(second, tmp_path / "b.onnx", standardizer=scaler_b, metadata={"job_id": "b"})

    assert len(traces) == 1  # the second export put its weights into the first one's graph
    assert torch.equal(torch.rand(3), expected_rng) and second.training
    assert_reproduces(tmp_path / "b.onnx", second, scaler_b)
    assert_reproduces(tmp_path / "a.onnx", first, scaler_a)
    assert dict((p.key, p.value) for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props)["job_id"] == "b"

    # The reused file is the fresh export's, byte for byte (graph, initializers and metadata).
    empty_cache.clear()
    export_onnx(second, tmp_path / "fresh.onnx", standardizer=scaler_b, metadata={"job_id": "b"})
    assert len(traces) == 2
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "fresh.onnx").read_bytes()


def test_another_architecture_shape_opset_or_standardizer_is_traced(tmp_path, traces) -> None:
    export_onnx(mlp(0), tmp_path / "base.onnx")
    variants = {
        "hidden": (mlp(1, hidden=(16, 4)), {}),
        "depth": (mlp(2, hidden=(16,)), {}),
        "shape": (mlp(3, shape=(12,)), {}),  # the same weights' shapes, another input shape
        "standardizer": (mlp(4), {"standardizer": standardizer(4)}),
        "opset": (mlp(5), {"opset": 16}),
    }
    for name, (model, kwargs) in variants.items():
        export_onnx(model, tmp_path / f"{name}.onnx", **kwargs)
        assert_reproduces(tmp_path / f"{name}.onnx", model, kwargs.get("standardizer"))
        if name == "opset":
            assert onnx.load(str(tmp_path / f"{name}.onnx")).opset_import[0].version == 16
    assert len(traces) == 1 + len(variants)
    export_onnx(mlp(6, shape=(12,)), tmp_path / "again.onnx")  # each of them is reusable in turn
    assert len(traces) == 1 + len(variants)


def test_a_graph_with_computed_initializers_is_traced_every_time(tmp_path, traces, empty_cache, monkeypatch) -> None:
    checks = []
    real = export_module._reusable
    monkeypatch.setattr(export_module, "_reusable", lambda *a: checks.append(1) or real(*a))
    for seed in range(3):
        torch.manual_seed(seed)
        cnn = randomise_batch_norm(build_model("cnn2d", {"channels": [4, 8]}, input_shape=(1, 8, 8), num_classes=3))
        export_onnx(cnn, tmp_path / f"{seed}.onnx")
        assert_reproduces(tmp_path / f"{seed}.onnx", cnn)
        assert list(empty_cache.values()) == [None]  # from the first export on
    # The exporter folds each BatchNorm into its convolution: initializers no parameter holds.
    names = {i.name for i in onnx.load(str(tmp_path / "0.onnx")).graph.initializer}
    assert names - set(cnn.state_dict())
    assert len(traces) == 3
    assert list(empty_cache.values()) == [None] and len(checks) == 1  # known as not reusable: not checked again


def test_only_initializers_equal_to_the_modules_tensors_make_a_reusable_graph(tmp_path) -> None:
    model = mlp(0).eval()
    export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    state = model.state_dict()
    skeleton, names = export_module._reusable(proto, state)
    assert names == [i.name for i in proto.graph.initializer] and not skeleton.graph.initializer

    assert export_module._reusable(proto, {**state, "net.1.bias": state["net.1.bias"] + 1}) is None  # another value
    assert export_module._reusable(proto, {**state, "net.1.bias": state["net.1.bias"].double()}) is None
    assert export_module._reusable(proto, {k: v for k, v in state.items() if k != "net.1.bias"}) is None


def _poison(cache: OrderedDict, op_type: str) -> None:
    (skeleton, _), = cache.values()
    relu = next(node for node in skeleton.graph.node if node.op_type == "Relu")
    relu.op_type = op_type


@pytest.mark.parametrize("op_type", ["Sigmoid", "NoSuchOperator"])  # wrong outputs; a graph onnxruntime refuses
def test_a_reused_graph_that_fails_the_check_is_traced_afresh(tmp_path, traces, empty_cache, op_type) -> None:
    export_onnx(mlp(0), tmp_path / "a.onnx")
    _poison(empty_cache, op_type)
    second = mlp(1)
    export_onnx(second, tmp_path / "b.onnx")

    assert len(traces) == 2
    assert_reproduces(tmp_path / "b.onnx", second)
    assert op_type not in {n.op_type for n in onnx.load(str(tmp_path / "b.onnx")).graph.node}
    assert list(empty_cache.values()) == [None]  # the key missed something: not reused again
    export_onnx(mlp(2), tmp_path / "c.onnx")
    assert len(traces) == 3


def test_weights_no_graph_reproduces_leave_the_architecture_reusable(tmp_path, traces, empty_cache) -> None:
    export_onnx(mlp(0), tmp_path / "a.onnx")
    broken = mlp(1)
    with torch.no_grad():
        broken.net[1].weight[0, 0] = float("nan")  # a diverged student: no export reproduces NaN logits
    with pytest.raises(KDError, match="does not reproduce PyTorch"):
        export_onnx(broken, tmp_path / "nan.onnx")
    assert not (tmp_path / "nan.onnx").exists() and len(traces) == 2

    export_onnx(mlp(2), tmp_path / "b.onnx")  # traced again and remembered
    third = mlp(3)
    export_onnx(third, tmp_path / "c.onnx")  # reused
    assert len(traces) == 3
    assert_reproduces(tmp_path / "c.onnx", third)


def test_the_cache_is_bounded_and_keeps_the_recently_used(tmp_path, traces, empty_cache, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "GRAPH_CACHE_SIZE", 3)
    for width in (1, 2, 3):
        export_onnx(mlp(width, hidden=(width,)), tmp_path / "m.onnx")
    export_onnx(mlp(9, hidden=(1,)), tmp_path / "m.onnx")  # reused, and now the most recent
    assert len(traces) == 3
    export_onnx(mlp(4, hidden=(4,)), tmp_path / "m.onnx")  # evicts width 2, the least recently used
    assert len(empty_cache) == 3 and len(traces) == 4

    for width, traced in ((1, False), (3, False), (4, False), (2, True)):
        before = len(traces)
        export_onnx(mlp(10 + width, hidden=(width,)), tmp_path / "m.onnx")
        assert len(traces) - before == int(traced), width
    assert len(empty_cache) == 3
