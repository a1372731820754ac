"""Teachers from state dicts, ONNX graphs and precomputed logits (kdcore.teachers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdcore.errors import FormatError, SpecError, TeacherError
from kdcore.models import build_model
from kdcore.teachers import (
    LogitsTeacher,
    ModuleTeacher,
    OnnxTeacher,
    guess_num_classes,
    inspect_teacher_file,
    load_teacher,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IN, C = (8,), 3
PARAMS = {"hidden_sizes": [16, 12], "dropout": 0.5}  # layers net.1, net.4, net.7


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return build_model("mlp", PARAMS, input_shape=IN, num_classes=C)


@pytest.fixture
def x():
    return torch.randn(37, *IN, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def state_path(tmp_path, mlp):
    path = tmp_path / "teacher.safetensors"
    save_file(mlp.state_dict(), path)
    return path


def _expected(module, x):
    module.eval()
    with torch.no_grad():
        return module(x)


def _export_onnx(module, path, *, dynamic=True, batch=1):
    module.eval()
    kwargs = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    torch.onnx.export(module, torch.zeros(batch, *IN), path, dynamo=False,
                      input_names=["input"], output_names=["logits"], **kwargs)
    return path


# ---- state dict + architecture ----

def test_state_dict_teacher_matches_the_module_in_eval_mode(state_path, mlp, x):
    teacher = load_teacher(state_path, arch="mlp", arch_params=PARAMS,
                           input_shape=IN, num_classes=C)
    assert isinstance(teacher, ModuleTeacher)
    assert teacher.num_classes == C and teacher.input_shape == IN
    assert teacher.deterministic and not teacher.needs_indices
    out = teacher.logits(x)
    assert out.dtype == torch.float32 and out.shape == (37, C) and not out.requires_grad
    torch.testing.assert_close(out, _expected(mlp, x))
    torch.testing.assert_close(teacher.logits(x), out)  # dropout 0.5 is off: same targets every call


def test_logits_work_under_grad_mode_without_building_a_graph(state_path, x):
    teacher = load_teacher(state_path, arch="mlp", arch_params=PARAMS, input_shape=IN)
    with torch.enable_grad():
        out = teacher.logits(x.requires_grad_())
    assert out.grad_fn is None


def test_num_classes_is_read_from_the_state_dict_when_not_given(state_path, x):
    teacher = load_teacher(state_path, arch="mlp", arch_params=PARAMS, input_shape=IN)
    assert teacher.num_classes == C


def test_num_classes_that_does_not_match_the_state_dict(state_path):
    with pytest.raises(TeacherError, match=r"shape mismatches.*net\.7\.weight: file \[3, 12\] vs model \[4, 12\]"):
        load_teacher(state_path, arch="mlp", arch_params=PARAMS, input_shape=IN, num_classes=4)


def test_guess_uses_natural_order_of_layer_names(tmp_path):
    torch.manual_seed(0)
    module = build_model("mlp", {"hidden_sizes": [5] * 6}, input_shape=IN, num_classes=7)
    path = tmp_path / "m.safetensors"
    save_file(module.state_dict(), path)  # names sort as net.1, net.11, net.13, net.3 ... on disk
    from kdcore.formats import read_safetensors_header

    assert guess_num_classes(read_safetensors_header(path)) == (7, "net.13.weight")


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path, mlp):
    state = dict(mlp.state_dict())
    del state["net.1.bias"]
    state["extra.weight"] = torch.zeros(2, 2)
    state["net.4.weight"] = torch.zeros(12, 99)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    with pytest.raises(TeacherError) as info:
        load_teacher(path, arch="mlp", arch_params=PARAMS, input_shape=IN, num_classes=C)
    message = str(info.value)
    assert "missing keys (1): net.1.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "net.4.weight: file [12, 99] vs model [12, 16]" in message
    assert info.value.field == "teacher.path"


def test_wrong_architecture_params_are_a_shape_error(state_path):
    with pytest.raises(TeacherError, match="shape mismatches"):
        load_teacher(state_path, arch="mlp", arch_params={"hidden_sizes": [16, 13], "dropout": 0.5},
                     input_shape=IN, num_classes=C)


def test_non_finite_weights_are_refused(tmp_path, mlp):
    state = dict(mlp.state_dict())
    state["net.1.weight"] = state["net.1.weight"].clone()
    state["net.1.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, path)
    with pytest.raises(TeacherError, match=r"non-finite.*net\.1\.weight \(1\)"):
        load_teacher(path, arch="mlp", arch_params=PARAMS, input_shape=IN, num_classes=C)
    with pytest.raises(TeacherError, match="non-finite"):
        inspect_teacher_file(path)


def test_state_dict_without_architecture(state_path):
    with pytest.raises(TeacherError, match="needs an architecture") as info:
        load_teacher(state_path, input_shape=IN)
    assert info.value.field == "teacher.arch"


def test_unknown_architecture_names_the_field(state_path):
    with pytest.raises(SpecError) as info:
        load_teacher(state_path, arch="transformer9000", input_shape=IN, num_classes=C)
    assert info.value.field == "teacher.arch"


def test_state_dict_is_refused_as_teacher_logits(state_path):
    with pytest.raises(FormatError, match="not one tensor 'logits'"):
        load_teacher(state_path, purpose="teacher_logits")


# ---- ONNX ----

def test_onnx_teacher_matches_torch(tmp_path, mlp, x):
    path = _export_onnx(mlp, tmp_path / "t.onnx")
    teacher = load_teacher(path, input_shape=IN, num_classes=C)
    assert isinstance(teacher, OnnxTeacher) and teacher.deterministic and not teacher.needs_indices
    out = teacher.logits(x)
    assert out.dtype == torch.float32 and out.shape == (37, C)
    torch.testing.assert_close(out, _expected(mlp, x), atol=1e-4, rtol=1e-4)


def test_onnx_teacher_runs_in_chunks(tmp_path, mlp, x):
    path = _export_onnx(mlp, tmp_path / "t.onnx")
    teacher = OnnxTeacher(path, input_shape=IN, num_classes=C, chunk_size=5)
    torch.testing.assert_close(teacher.logits(x), _expected(mlp, x), atol=1e-4, rtol=1e-4)


def test_onnx_with_fixed_batch_pads_the_last_chunk(tmp_path, mlp, x):
    path = _export_onnx(mlp, tmp_path / "fixed.onnx", dynamic=False, batch=4)
    teacher = load_teacher(path, input_shape=IN)
    assert teacher.num_classes == C
    torch.testing.assert_close(teacher.logits(x), _expected(mlp, x), atol=1e-4, rtol=1e-4)


def test_onnx_input_shape_mismatch_names_both_shapes(tmp_path, mlp):
    path = _export_onnx(mlp, tmp_path / "t.onnx")
    with pytest.raises(TeacherError) as info:
        load_teacher(path, input_shape=(9,), num_classes=C)
    assert "[batch, 8]" in str(info.value) and "[9]" in str(info.value)
    with pytest.raises(TeacherError, match=r"\[2, 4\]"):
        load_teacher(path, input_shape=(2, 4), num_classes=C)


def test_onnx_class_mismatch(tmp_path, mlp):
    path = _export_onnx(mlp, tmp_path / "t.onnx")
    with pytest.raises(TeacherError, match="3 classes, but the data has 10"):
        load_teacher(path, input_shape=IN, num_classes=10)


def test_inspect_onnx(tmp_path, mlp):
    path = _export_onnx(mlp, tmp_path / "t.onnx")
    report = inspect_teacher_file(path)
    assert report == {"format": "onnx", "kind": "onnx", "parameters": sum(p.numel() for p in mlp.parameters()),
                      "num_classes": C, "input_shape": [8], "num_samples": None, "tensors": 6}


# ---- precomputed logits ----

@pytest.fixture
def logits():
    return torch.randn(20, C, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("kind", ["npz", "safetensors"])
def test_logits_teacher_returns_the_rows_asked_for(tmp_path, logits, kind):
    if kind == "npz":
        path = tmp_path / "logits.npz"
        np.savez(path, logits=logits.numpy())
    else:
        path = tmp_path / "logits.safetensors"
        save_file({"logits": logits}, path)
    teacher = load_teacher(path, num_samples=20, num_classes=C)
    assert isinstance(teacher, LogitsTeacher)
    assert teacher.needs_indices and teacher.input_shape is None and teacher.num_classes == C
    idx = torch.tensor([19, 0, 7, 7])
    out = teacher.logits(torch.zeros(4, 5), idx)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, logits[idx])
    report = inspect_teacher_file(path, purpose="teacher_logits")
    assert report["kind"] == "logits" and report["num_samples"] == 20 and report["num_classes"] == C


def test_logits_row_count_must_match_the_training_set(tmp_path, logits):
    path = tmp_path / "logits.npz"
    np.savez(path, logits=logits.numpy())
    with pytest.raises(TeacherError, match="20 rows but the training set has 21"):
        load_teacher(path, num_samples=21)
    teacher = load_teacher(path)
    teacher.check_against(20)
    with pytest.raises(TeacherError, match="20 rows"):
        teacher.check_against(19)


def test_logits_need_indices(logits):
    teacher = LogitsTeacher(logits)
    with pytest.raises(TeacherError, match="pass indices"):
        teacher.logits(torch.zeros(2, 1))
    with pytest.raises(TeacherError, match=r"\[0, 20\)"):
        teacher.logits(torch.zeros(1, 1), torch.tensor([20]))


@pytest.mark.parametrize("bad,reason", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "non-finite"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "non-finite"),
    (np.array([[1, 2], [3, 4]]), "must be floats"),
    (np.zeros(5), "2-D"),
], ids=["nan", "inf", "int", "1d"])
def test_bad_logits_arrays(tmp_path, bad, reason):
    path = tmp_path / "logits.npz"
    np.savez(path, logits=bad)
    with pytest.raises(TeacherError, match=reason):
        load_teacher(path)


def test_logits_npz_with_object_array_is_refused(tmp_path):
    path = tmp_path / "logits.npz"
    np.savez(path, logits=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(TeacherError, match="object arrays are refused"):
        load_teacher(path)


def test_npz_without_logits(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((2, 3)), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(TeacherError, match=r"no array 'logits' \(found: x, y\)"):
        load_teacher(path)


# ---- inspection of a state dict ----

def test_inspect_state_dict(state_path, mlp):
    report = inspect_teacher_file(state_path)
    assert report == {"format": "safetensors", "kind": "state_dict",
                      "parameters": sum(t.numel() for t in mlp.state_dict().values()),
                      "num_classes": C, "input_shape": None, "num_samples": None, "tensors": 6}


def test_inspect_refuses_what_is_not_a_teacher(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,0\n")
    with pytest.raises(FormatError, match="accepted for a teacher"):
        inspect_teacher_file(path)
