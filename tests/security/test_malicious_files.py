"""Hostile uploads through the real API (POST /v1/files, every purpose each one applies to):
pickles that would run a command, torch archives (code), zip bombs, lying safetensors headers,
object arrays, non-finite weights and data. Each is a 422 problem naming the reason; none runs,
none is kept, and the bombs are refused by arithmetic on their headers, not by running out of
memory."""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jobs.settings import Settings
from kdcore.formats import MAX_DECODED_BYTES, MAX_SAFETENSORS_HEADER, MAX_ZIP_MEMBERS
from harness.services import ROOT
from tests.utils import API_KEY, problem, upload
from tests.security import hostile_files as h

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

UPLOAD_CAP = 16 * 1024 * 1024  # big enough that every bomb below reaches inspection instead of the 413
PURPOSES = ("teacher", "teacher_logits", "dataset", "student_init")


@pytest.fixture
def settings(clean_pg, redis_url, tmp_path) -> Settings:  # overrides tests/conftest.py's 2 MiB cap
    return Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data",
                    bootstrap_api_key=API_KEY, max_upload_bytes=UPLOAD_CAP)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a pickle from an upload was executed"


def refused(client, path: Path, purpose: str, reason: str) -> dict:
    """Upload `path` as `purpose`: a 422 problem on field "file" whose detail matches `reason`."""
    body = problem(upload(client, path, purpose), 422)
    assert body["errors"][0]["field"] == "file", body
    assert body["detail"].startswith("file: ")
    assert re.search(reason, body["detail"], re.IGNORECASE), (purpose, path.name, body["detail"])
    return body


def assert_nothing_kept(client, settings) -> None:
    assert client.get("/v1/files").json()["data"] == []
    artifacts = settings.artifacts_path
    assert not artifacts.exists() or [p for p in artifacts.rglob("*") if p.is_file()] == []
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


# ---- code: pickles and torch archives ----

@pytest.mark.parametrize("name", ["model.pt", "model.pth", "pytorch_model.bin", "last.ckpt", "data.npz"])
def test_pickle_that_runs_a_command_is_refused_unrun_for_every_purpose(client, settings, tmp_path, marker, name):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(h.Marker(marker), protocol=4))
    for purpose in PURPOSES:
        refused(client, path, purpose, "pickle")
    old = tmp_path / "data.csv"  # protocol 0 has no magic number: recognised by its opcodes
    old.write_bytes(pickle.dumps(h.Marker(marker), protocol=0))
    for purpose in PURPOSES:
        refused(client, old, purpose, "pickle")
    assert_nothing_kept(client, settings)


def test_torch_save_archives_are_refused_unrun(client, settings, tmp_path, marker):
    zipped = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "evil": h.Marker(marker)}, zipped)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2), "evil": h.Marker(marker)}, legacy, _use_new_zipfile_serialization=False)
    for purpose in PURPOSES:
        refused(client, zipped, purpose, r"torch\.save archive.*pickle")
        refused(client, legacy, purpose, r"legacy .*torch\.save.*pickle")
    assert_nothing_kept(client, settings)


def test_torchscript_archive_is_refused(client, settings, tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.script(_module()).save(str(path))
    for purpose in PURPOSES:
        refused(client, path, purpose, "TorchScript archive")
    assert_nothing_kept(client, settings)


def test_torch_export_archive_is_refused(client, settings, tmp_path):
    path = tmp_path / "model.pt2"
    try:
        torch.export.save(torch.export.export(_module(), (torch.zeros(2, 4),)), str(path))
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"this torch cannot export: {exc!r}")
    for purpose in PURPOSES:
        refused(client, path, purpose, r"torch\.export")
    assert_nothing_kept(client, settings)


# ---- zip bombs ----

@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    # 2**20 samples (under MAX_SAMPLES) of 1024 float32 zeros: x alone inflates to 4 GiB from 4 MiB
    deflate_4g = h.dataset_bomb(d / "deflate-4g.npz", 2**20, 1024)
    inner = h.dataset_bomb(d / "inner.npz", 2**16, 1024)  # 256 MiB in 260 KiB
    return {
        "deflate-4g": deflate_4g,
        "logits-4g": h.logits_bomb(d / "logits-4g.npz", 2**20, 1024),
        "deflate-under-cap": h.dataset_bomb(d / "deflate-1.5g.npz", 2**19, 768),  # 1.5 GiB: under the cap, 1000x
        "bzip2": h.bzip2_bomb(d / "bzip2.npz"),
        "members": h.many_members(d / "members.npz", MAX_ZIP_MEMBERS + 1000),
        "zip-of-zips": h.zip_of_zips(d / "zips.npz", inner, 10),
        "npy-is-a-zip": h.npy_that_is_a_zip(d / "nested.npz", inner),
        "overlapping": h.overlapping_entries(d / "overlap.npz", 100),
    }


BOMB_REASONS = {
    "deflate-4g": rf"decompresses to 4294967424 bytes, over the limit of {MAX_DECODED_BYTES} \(MAX_DECODED_BYTES\)",
    "logits-4g": r"decompresses to 4294967424 bytes, over the limit .*MAX_DECODED_BYTES",
    "deflate-under-cap": r"times its size, over the limit of 100 times \(MAX_EXPANSION\)",
    "bzip2": r"compression method 12; only stored and deflate",
    "members": rf"zip archive of {MAX_ZIP_MEMBERS + 1000} members, over the limit of {MAX_ZIP_MEMBERS} "
               r"\(MAX_ZIP_MEMBERS\)",
    "zip-of-zips": r"zip archive that is not an \.npz \(members: part0\.npz",
    "npy-is-a-zip": r"array 'x' is not a readable \.npy array",
    "overlapping": rf"decompress to {101 * (64 * 1024**2 + 128)} bytes, over the limit .*MAX_DECODED_BYTES",
}
BOMB_PURPOSES = {"logits-4g": ("teacher", "teacher_logits")}


def test_zip_bombs_are_refused_by_their_headers_in_bounded_memory(client, settings, bombs):
    for path in bombs.values():
        assert path.stat().st_size < UPLOAD_CAP
    with zipfile.ZipFile(bombs["deflate-4g"]) as zf:  # the bomb is real: it declares what it inflates to
        assert sum(i.file_size for i in zf.infolist()) > 4 * 1024**3
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for name, path in bombs.items():
        for purpose in BOMB_PURPOSES.get(name, ("dataset", "teacher_logits", "teacher")):
            refused(client, path, purpose, BOMB_REASONS[name])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < 256 * 1024**2, f"peak RSS grew by {grown} bytes while refusing the bombs"
    assert_nothing_kept(client, settings)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_inspection_refuses_the_bombs_under_an_address_space_cap(bombs):
    """The same inspection the API runs, in a fresh process whose address space is capped at
    1 GiB above what its imports use: a bomb that got decompressed would die with MemoryError
    (reported below) instead of taking the machine's memory."""
    script = r"""
import json, resource, sys
from pathlib import Path
from api.file_inspection import inspect_upload
from kdcore.errors import KDError
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 1024**3, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name, path, purpose in json.loads(sys.argv[1]):
    try:
        inspect_upload(Path(path), purpose)
        out[f"{name}/{purpose}"] = "ACCEPTED"
    except KDError as exc:
        out[f"{name}/{purpose}"] = exc.message
    except BaseException as exc:
        out[f"{name}/{purpose}"] = f"DIED {type(exc).__name__}: {exc}"
out["rss_growth"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps(out))
"""
    jobs = [(name, str(path), purpose) for name, path in bombs.items()
            for purpose in BOMB_PURPOSES.get(name, ("dataset", "teacher_logits", "teacher"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, _path, purpose in jobs:
        assert re.search(BOMB_REASONS[name], out[f"{name}/{purpose}"]), (name, purpose, out[f"{name}/{purpose}"])
    assert out["rss_growth"] < 256 * 1024**2, out["rss_growth"]


# ---- safetensors with lying headers ----

E = h.entry
LYING_HEADERS = [
    ("offsets-past-end", {"w": E("F32", [4], 0, 16)}, b"\0" * 8, None, "outside the 8 byte data buffer"),
    ("huge-header-length", {"w": E("F32", [2], 0, 8)}, b"\0" * 8, 2**40,
     f"exceeds the {MAX_SAFETENSORS_HEADER} byte cap"),
    ("header-past-file", {"w": E("F32", [2], 0, 8)}, b"\0" * 8, 10_000, "runs past the end"),
    ("overlapping", {"a": E("F32", [2], 0, 8), "b": E("F32", [2], 4, 12)}, b"\0" * 12, None, "overlap"),
    ("negative-shape", {"w": E("F32", [-2], 0, 8)}, b"\0" * 8, None, "integers >= 0"),
    ("float-shape", {"w": E("F32", [2.0], 0, 8)}, b"\0" * 8, None, "integers >= 0"),
    ("string-shape", {"w": E("F32", ["2"], 0, 8)}, b"\0" * 8, None, "integers >= 0"),
    ("shape-overflows", {"a": E("F32", [0, 2**64], 0, 0), "w": E("F32", [2], 0, 8)}, b"\0" * 8, None,
     "overflows 64-bit sizes"),
    ("rank", {"a": E("F32", [1] * 100, 0, 4)}, b"\0" * 4, None, r"100 dimensions, over the limit .*MAX_TENSOR_RANK"),
    ("dtype-not-a-string", {"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "unknown dtype"),
    ("size-lies", {"w": E("F32", [3], 0, 8)}, b"\0" * 8, None, "needs 12"),
]


@pytest.mark.parametrize("header, data, length, reason", [c[1:] for c in LYING_HEADERS],
                         ids=[c[0] for c in LYING_HEADERS])
def test_safetensors_with_a_lying_header_is_refused(client, settings, tmp_path, header, data, length, reason):
    path = h.safetensors_raw(tmp_path / "w.safetensors", header, data, length)
    for purpose in ("teacher", "teacher_logits", "student_init"):
        refused(client, path, purpose, reason)
    if isinstance(header, dict) and "w" in header:  # the same lie about a 'logits' tensor
        renamed = {("logits" if k == "w" else k): v for k, v in header.items()}
        logits = h.safetensors_raw(tmp_path / "logits.safetensors", renamed, data, length)
        refused(client, logits, "teacher_logits", reason)
    assert_nothing_kept(client, settings)


# ---- ONNX graphs that lie or reach outside the file ----

def _onnx_graph(initializers):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, onnx


def test_onnx_that_lies_about_a_tensor_or_reads_other_files_is_refused(client, settings, tmp_path):
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    model, onnx = _onnx_graph([w])
    lie = model.graph.initializer.add()  # unused, so onnxruntime loads the graph; 10^18 elements in 16 bytes
    lie.name, lie.data_type, lie.raw_data = "big", TensorProto.FLOAT, b"\0" * 16
    lie.dims.extend([10**9, 10**9])
    path = tmp_path / "lie.onnx"
    path.write_bytes(model.SerializeToString())
    refused(client, path, "teacher", r"tensor 'big' cannot be read")  # was a 500

    model, onnx = _onnx_graph([w])
    ext = model.graph.initializer[0]
    ext.ClearField("float_data")
    ext.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = ext.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    refused(client, path, "teacher", r"external data \(tensor 'w'\) is refused")
    assert_nothing_kept(client, settings)


# ---- object arrays ----

def test_npz_with_object_arrays_is_refused_unrun(client, settings, tmp_path, marker):
    evil = np.array([h.Marker(marker)] * 4, dtype=object)
    data = tmp_path / "data.npz"
    np.savez(data, x=evil.reshape(4, 1), y=np.arange(4))
    refused(client, data, "dataset", "array 'x' holds Python objects; object arrays are refused")
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((4, 2), np.float32), y=evil)
    refused(client, labels, "dataset", "array 'y' holds Python objects")
    logits = tmp_path / "logits.npz"
    np.savez(logits, logits=evil.reshape(2, 2))
    for purpose in ("teacher", "teacher_logits"):
        refused(client, logits, purpose, "array 'logits' holds Python objects")
    assert_nothing_kept(client, settings)


# ---- non-finite values ----

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused(client, settings, tmp_path, bad):
    state = {k: v.clone() for k, v in _module().state_dict().items()}
    state["2.weight"][1, 3] = bad
    weights = tmp_path / "teacher.safetensors"
    save_file(state, str(weights))
    for purpose in ("teacher", "student_init"):
        refused(client, weights, purpose, r"non-finite values \(NaN or Inf\) in: 2\.weight \(1\)")
    half = tmp_path / "half.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(half))
    refused(client, half, "teacher", r"non-finite values \(NaN or Inf\) in: 2\.weight")

    onnx_path = tmp_path / "teacher.onnx"
    torch.onnx.export(_module(), torch.zeros(1, 4), onnx_path, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    init = model.graph.initializer[0]
    values = numpy_helper.to_array(init).copy()
    values.flat[0] = bad
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(onnx_path))
    refused(client, onnx_path, "teacher", rf"tensor {init.name!r} has non-finite values \(NaN or Inf\)")

    logits = np.zeros((6, 3), np.float32)
    logits[4, 2] = bad
    npz = tmp_path / "logits.npz"
    np.savez(npz, logits=logits)
    st = tmp_path / "logits.safetensors"
    save_file({"logits": torch.from_numpy(logits)}, str(st))
    for purpose in ("teacher", "teacher_logits"):
        refused(client, npz, purpose, r"logits hold non-finite values \(NaN or Inf\)")
        refused(client, st, purpose, r"logits hold non-finite values \(NaN or Inf\)")
    assert_nothing_kept(client, settings)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_data_is_refused(client, settings, tmp_path, bad):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.ones((8, 3), np.float32)
    x[5, 1] = bad
    y = np.arange(8) % 2
    npz = tmp_path / "data.npz"
    np.savez(npz, x=x, y=y)
    refused(client, npz, "dataset", r"x has 1 non-finite values \(NaN or infinite.*first in sample 5")
    big = tmp_path / "float64.npz"  # finite in float64, infinite once float32
    np.savez(big, x=np.full((8, 3), 1e300), y=y)
    refused(client, big, "dataset", r"x has 24 non-finite values")
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"f0": x[:, 0], "f1": x[:, 1], "label": y}), parquet)
    refused(client, parquet, "dataset", r"non-finite values|missing values")
    csv = tmp_path / "data.csv"
    cell = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[str(bad)]
    csv.write_text("f0,f1,label\n" + "".join(f"1.0,{cell if i == 5 else '2.0'},{i % 2}\n" for i in range(8)))
    refused(client, csv, "dataset", r"x has 1 non-finite values.*sample 5|column 'f1' has 1 missing values")
    assert_nothing_kept(client, settings)
