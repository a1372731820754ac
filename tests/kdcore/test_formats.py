"""Content sniffing and safetensors header validation (kdcore.formats)."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdcore.errors import FormatError
from kdcore.formats import (
    ACCEPTED_FORMATS,
    MAX_SAFETENSORS_HEADER,
    check_format,
    read_onnx_model,
    read_safetensors_header,
    sniff_format,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx / torch.jit deprecations


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _small_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _write_safetensors_raw(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def _assert_refused(path, found: str, purpose: str = "teacher") -> FormatError:
    with pytest.raises(FormatError) as info:
        sniff_format(path, purpose=purpose)
    message = str(info.value)
    assert found in message
    assert ACCEPTED_FORMATS[purpose] in message
    assert info.value.field == "file"
    return info.value


# ---- accepted formats ----

def test_accepted_formats_are_recognised_by_content_not_name(tmp_path):
    m = _small_module()
    save_file(m.state_dict(), tmp_path / "a.bin")
    np.savez(tmp_path / "b.bin", x=np.zeros((2, 3)), y=np.zeros(2, dtype=np.int64))
    (tmp_path / "c.bin").write_text("f0,f1,label\n0.5,1,0\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"f0": [1.0, 2.0], "label": [0, 1]}), tmp_path / "d.bin")
    torch.onnx.export(m, torch.zeros(1, 4), tmp_path / "e.bin", dynamo=False,
                      input_names=["input"], output_names=["logits"])
    assert sniff_format(tmp_path / "a.bin") == "safetensors"
    assert sniff_format(tmp_path / "b.bin.npz") == "npz"
    assert sniff_format(tmp_path / "c.bin") == "csv"
    assert sniff_format(tmp_path / "d.bin") == "parquet"
    assert sniff_format(tmp_path / "e.bin") == "onnx"


def test_check_format_refuses_a_wellformed_file_of_the_wrong_kind(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("f0,label\n1,0\n")
    with pytest.raises(FormatError, match="a csv file") as info:
        check_format(path, "teacher")
    assert ACCEPTED_FORMATS["teacher"] in str(info.value)
    assert check_format(path, "dataset") == "csv"


# ---- refused: pickles and torch archives (code) ----

def test_raw_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "teacher.safetensors"  # a lying name changes nothing
    path.write_bytes(pickle.dumps(_Marker(marker), protocol=4))
    _assert_refused(path, "pickle")
    for purpose in ACCEPTED_FORMATS:
        with pytest.raises(FormatError):
            check_format(path, purpose)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocol_pickles_are_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "data.csv"
    path.write_bytes(pickle.dumps(_Marker(marker), protocol=protocol))
    _assert_refused(path, "pickle", purpose="dataset")
    assert not marker.exists()


def test_torch_save_zip_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "evil": _Marker(marker)}, path)
    assert any(n.endswith("/data.pkl") for n in zipfile.ZipFile(path).namelist())
    err = _assert_refused(path, "torch.save archive")
    assert "safetensors" in str(err)  # tells the user how to convert
    assert not marker.exists()


def test_legacy_torch_save_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_small_module().state_dict(), path, _use_new_zipfile_serialization=False)
    _assert_refused(path, "legacy (non-zip) torch.save")


def test_pickled_numpy_array_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.arange(5).dump(path)
    _assert_refused(path, "pickled numpy", purpose="dataset")


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.script(_small_module()).save(str(path))
    _assert_refused(path, "TorchScript")


def test_torch_export_archive_is_refused(tmp_path):
    path = tmp_path / "model.pt2"
    m = _small_module()
    try:
        torch.export.save(torch.export.export(m, (torch.zeros(2, 4),)), str(path))
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.export does not work on this torch: {exc!r}")
    _assert_refused(path, "torch.export")


def test_old_style_export_archive_is_refused(tmp_path):
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/serialized_exported_program.json", "{}")
        zf.writestr("model/serialized_state_dict.pt", b"\x80\x04.")
    _assert_refused(path, "torch.export")


def test_zip_that_is_not_npz_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", b"")
        zf.writestr("readme.txt", "hi")
    _assert_refused(path, "not an .npz", purpose="dataset")


def test_npz_with_object_array_is_still_npz_by_content(tmp_path):
    # The container is fine; the object array is refused when read (test_data covers that).
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    assert sniff_format(path) == "npz"


def test_bare_npy_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.save(path.with_suffix(".npy"), np.zeros(3))
    _assert_refused(path.with_suffix(".npy"), "bare .npy", purpose="dataset")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _assert_refused(path, "empty")


@pytest.mark.parametrize("content", [
    b"\x00\x01\x02\x03garbage" * 10,
    b"\x08\x07" + bytes(range(256)),  # looks like protobuf at first byte, is not a model
    b"just one line without commas\n1\n",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
], ids=["binary", "fake-protobuf", "text", "png"])
def test_unknown_content_is_refused(tmp_path, content):
    path = tmp_path / "file.csv"
    path.write_bytes(content)
    _assert_refused(path, "unrecognised", purpose="dataset")


def test_message_without_purpose_lists_every_purpose(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"")
    with pytest.raises(FormatError) as info:
        sniff_format(path)
    for text in ACCEPTED_FORMATS.values():
        assert text in str(info.value)


def test_truncated_parquet_is_refused(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 20)
    _assert_refused(path, "truncated Parquet", purpose="dataset")


# ---- safetensors headers ----

def test_valid_header_is_returned_with_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64)}, path, metadata={"arch": "mlp"})
    header = read_safetensors_header(path)
    assert header["a"]["shape"] == [2, 3] and header["a"]["dtype"] == "F32"
    assert header["b"]["dtype"] == "I64"
    assert header["__metadata__"] == {"arch": "mlp"}


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize("header,data,length,reason", [
    ({"a": _entry("F32", [4], 0, 16)}, b"\x00" * 8, None, "outside"),  # offset past the end
    ({"a": _entry("F32", [2], 0, 8)}, b"\x00" * 8, MAX_SAFETENSORS_HEADER + 1, "exceeds"),
    ({"a": _entry("F32", [2], 0, 8)}, b"\x00" * 8, 10_000, "runs past the end"),
    ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, b"\x00" * 12, None, "overlap"),
    ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 12, 16)}, b"\x00" * 16, None, "belong to no tensor"),
    ({"a": _entry("F32", [2], 0, 8)}, b"\x00" * 12, None, "trailing bytes"),
    ({"a": _entry("F32", [3], 0, 8)}, b"\x00" * 8, None, "needs 12"),
    ({"a": _entry("Q7", [2], 0, 8)}, b"\x00" * 8, None, "unknown dtype"),
    ({"a": _entry("F32", [-2], 0, 8)}, b"\x00" * 8, None, "integers >= 0"),
    ({"a": _entry("F32", [2.0], 0, 8)}, b"\x00" * 8, None, "integers >= 0"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\x00" * 8, None, "exactly dtype"),
    ({"__metadata__": {"k": 1}}, b"", None, "__metadata__"),
    (b"{not json at all}", b"", None, "not UTF-8 JSON"),
    (b'{"a": 1, "a": 2}', b"", None, "duplicate"),
    (b"[1, 2, 3]", b"", None, "not an object"),
    (b"{\xff\xfe}", b"", None, "not UTF-8 JSON"),
], ids=["offset-past-end", "huge-length", "length-past-file", "overlap", "gap", "trailing", "size",
        "dtype", "negative-shape", "float-shape", "missing-key", "metadata", "not-json", "duplicate-key",
        "not-object", "not-utf8"])
def test_lying_headers_are_refused(tmp_path, header, data, length, reason):
    path = _write_safetensors_raw(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(FormatError, match=reason):
        read_safetensors_header(path)
    with pytest.raises(FormatError):  # and sniffing refuses it too, never returning "safetensors"
        sniff_format(path)


def test_sniff_refuses_huge_header_length_naming_it(tmp_path):
    path = _write_safetensors_raw(tmp_path / "bad.safetensors", {"a": _entry("F32", [0], 0, 0)},
                                  length=2**40)
    with pytest.raises(FormatError, match="exceeds"):
        sniff_format(path)


def test_empty_tensors_and_empty_file_header(tmp_path):
    path = tmp_path / "z.safetensors"
    save_file({"a": torch.zeros(0, 3), "b": torch.zeros(2)}, path)
    assert set(read_safetensors_header(path)) == {"a", "b"}


def test_safetensors_produced_by_the_library_always_passes(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {f"t{i}": torch.randn(i + 1, 3).to(dt) for i, dt in
               enumerate([torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.bool, torch.uint8])}
    save_file(tensors, path)
    header = read_safetensors_header(path)
    assert sorted(k for k in header if k != "__metadata__") == sorted(tensors)


# ---- ONNX ----

def test_onnx_with_external_data_is_refused(tmp_path):
    import onnx

    src = tmp_path / "m.onnx"
    torch.onnx.export(_small_module(), torch.zeros(1, 4), src, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    model = onnx.load(str(src))
    out = tmp_path / "ext.onnx"
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    with pytest.raises(FormatError, match="external data"):
        read_onnx_model(out)
    _assert_refused(out, "external data")


def test_onnx_without_inputs_is_not_accepted(tmp_path):
    import onnx
    from onnx import helper

    node = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    with pytest.raises(FormatError, match="no graph with inputs"):
        read_onnx_model(path)
    _assert_refused(path, "unrecognised")


def test_a_teacher_header_is_parsed_once_per_inspection_and_again_when_the_file_changes(tmp_path, monkeypatch):
    from kdcore import formats
    from kdcore.teachers import inspect_teacher_file

    parses = []
    parse = formats._parse_safetensors_header
    monkeypatch.setattr(formats, "_parse_safetensors_header", lambda *a: parses.append(a) or parse(*a))
    path = tmp_path / "teacher.safetensors"
    save_file({"fc.weight": torch.randn(10, 4), "fc.bias": torch.zeros(10)}, str(path))
    assert inspect_teacher_file(path)["num_classes"] == 10
    assert len(parses) == 1  # sniffing, the logits test and the state dict's report share one parse
    # the same path rewritten (another upload's temp file, say): read afresh, never the old header
    save_file({"fc.weight": torch.randn(7, 4), "fc.bias": torch.zeros(7), "extra": torch.zeros(3)}, str(path))
    assert inspect_teacher_file(path)["num_classes"] == 7 and len(parses) == 2
    header = formats.read_safetensors_header(path)
    assert set(header) == {"fc.weight", "fc.bias", "extra"} and len(parses) == 2
