"""Builtin datasets, uploaded dataset files, splits, standardisation and batching (kdcore.data)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdcore.data import (
    ArrayDataset,
    IndexBatcher,
    Standardizer,
    describe_builtin,
    inspect_dataset_file,
    load_builtin,
    read_dataset_file,
    split_indices,
    split_train_val,
)
from kdcore.errors import DataError, FormatError, SpecError


# ---- builtins ----

@pytest.fixture(scope="module")
def mnist1d():
    return load_builtin("mnist1d")


def _assert_same(a: dict[str, ArrayDataset], b: dict[str, ArrayDataset]) -> None:
    assert a.keys() == b.keys() == {"train", "test"}
    for split in a:
        assert torch.equal(a[split].x, b[split].x) and torch.equal(a[split].y, b[split].y)


def _assert_documented(name: str, data: dict[str, ArrayDataset]) -> None:
    info = describe_builtin(name)
    for split, ds in data.items():
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert ds.input_shape == tuple(info["input_shape"])
        assert ds.num_classes == info["num_classes"] == 10
        assert ds.num_samples == info["num_samples"][split]
        assert set(ds.y.tolist()) == set(range(10))


def test_mnist1d_has_the_documented_shapes(mnist1d):
    _assert_documented("mnist1d", mnist1d)
    assert mnist1d["train"].input_shape == (40,)
    assert torch.isfinite(mnist1d["train"].x).all()


def test_mnist1d_is_deterministic_and_leaves_global_rngs_alone():
    # The generator behind load_builtin("mnist1d"), at 1/10 of the size: a full generation takes
    # seconds, and determinism does not depend on the size.
    from kdcore.data import _mnist1d

    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    first = _mnist1d(500)
    assert np.random.rand() == expected_np and random.random() == expected_py  # mnist1d reseeds both
    _assert_same(first, _mnist1d(500))
    assert first["train"].num_samples == 400


def test_digits_shapes_split_and_determinism():
    data = load_builtin("digits")
    _assert_documented("digits", data)
    assert data["train"].input_shape == (64,)
    assert float(data["train"].x.min()) == 0.0 and float(data["train"].x.max()) == 16.0
    _assert_same(data, load_builtin("digits"))
    counts = torch.bincount(data["test"].y, minlength=10).float()
    total = torch.bincount(torch.cat([data["train"].y, data["test"].y]), minlength=10).float()
    assert torch.allclose(counts / total, torch.full((10,), 0.2), atol=0.02)  # stratified


def test_unknown_builtin():
    with pytest.raises(SpecError, match="digits, mnist1d") as info:
        load_builtin("imagenet")
    assert info.value.field == "dataset.builtin"


# ---- dataset files ----

def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _xy(n=12, shape=(3,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)), (np.arange(n) % classes).astype(np.int64)


def test_npz_is_read_and_cast(tmp_path):
    x, y = _xy(shape=(2, 3))
    path = _npz(tmp_path, x=x, y=y.astype(np.uint8), extra=np.zeros(4))  # extra arrays are fine
    ds = read_dataset_file(path)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.input_shape == (2, 3) and ds.num_samples == 12 and ds.num_classes == 3
    torch.testing.assert_close(ds.x, torch.from_numpy(x).float())
    assert ds.y.tolist() == y.tolist()


def test_integer_features_and_explicit_num_classes(tmp_path):
    path = _npz(tmp_path, x=np.arange(8, dtype=np.int16).reshape(4, 2), y=np.array([0, 1, 0, 1]))
    ds = read_dataset_file(path, num_classes=5)
    assert ds.num_classes == 5 and ds.x.dtype == torch.float32


def test_inspect_dataset_file(tmp_path):
    x, y = _xy(n=7, classes=4)
    report = inspect_dataset_file(_npz(tmp_path, x=x, y=y))
    assert report.to_dict() == {"format": "npz", "num_samples": 7, "input_shape": [3], "num_classes": 4,
                                "label_histogram": [2, 2, 2, 1], "num_labeled": 7}


def _bad_cases():
    x, y = _xy()
    nan_x = x.copy()
    nan_x[5, 1] = np.nan
    nan_x[8, 0] = np.inf
    return [
        ({"x": x[:0], "y": y[:0]}, {}, "empty"),
        ({"y": y}, {}, "no array 'x'"),
        ({"x": x, "y": y[:-1]}, {}, "'x' has 12 samples but 'y' has 11"),
        ({"x": x.astype(np.complex64), "y": y}, {}, "'x' has dtype complex64"),
        ({"x": np.array([["a"]] * 12), "y": y}, {}, "'x' has dtype <U1"),
        ({"x": x, "y": y.astype(np.float32)}, {}, "floats are refused"),
        ({"x": x[:, 0], "y": y}, {}, "at least 2 dimensions"),
        ({"x": x, "y": y.reshape(12, 1)}, {}, "must be 1-D"),
        ({"x": nan_x, "y": y}, {}, "2 non-finite values.*first in sample 5"),
        ({"x": np.full((12, 3), 1e300), "y": y}, {}, "36 non-finite values"),  # overflows float32
        ({"x": x, "y": y - 2}, {}, "must be >= 0, or -1 for an unlabelled row; sample 0 has label -2"),
        ({"x": x, "y": y}, {"num_classes": 2}, "below 2.*sample 2 has label 2"),
        ({"x": x, "y": y * 100_000}, {}, "at most 100000 classes"),
        ({"x": x, "y": y}, {"max_samples": 11}, "12 samples is over the limit of 11"),
        ({"x": x, "y": y}, {"max_bytes": 100}, "over the 100 byte limit"),
        ({"x": np.array([{"a": 1}] * 12, dtype=object).reshape(12, 1), "y": y}, {}, "object arrays are refused"),
        ({"x": x, "y": np.array([None] * 12, dtype=object)}, {}, "object arrays are refused"),
    ]


@pytest.mark.parametrize("arrays,kwargs,reason", _bad_cases(), ids=[
    "empty", "missing-x", "length", "complex-x", "string-x", "float-y", "1d-x", "2d-y",
    "non-finite", "overflow", "negative-label", "label-too-big", "absurd-label", "too-many-samples",
    "too-big", "object-x", "object-y"])
def test_npz_data_errors(tmp_path, arrays, kwargs, reason):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=reason) as info:
        read_dataset_file(path, **kwargs)
    assert info.value.field == "file"


@pytest.mark.parametrize("x_shape, with_y", [((12, 0), True), ((12, 0), False), ((12, 3, 0), True),
                                            ((12, 0, 5), False)], ids=["n-by-0", "n-by-0-unlabelled", "n-3-0", "n-0-5"])
def test_a_dataset_with_no_features_is_refused(tmp_path, x_shape, with_y):
    """x of shape (N, 0) has rows but nothing in them; it was accepted (issue 16 item 10) and a job
    on it could only fail later. Refused from the .npy header, naming the shape."""
    y = np.arange(12) % 3
    path = _npz(tmp_path, x=np.zeros(x_shape, np.float32), **({"y": y} if with_y else {}))
    with pytest.raises(DataError, match=r"0 features") as info:
        read_dataset_file(path)
    assert info.value.field == "file" and str(list(x_shape)) in str(info.value)
    with pytest.raises(DataError, match=r"0 features"):
        inspect_dataset_file(path)


def test_npz_header_declaring_a_huge_array_is_refused_before_reading(tmp_path):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10, 10**11)})
    y = io.BytesIO()
    np.save(y, np.zeros(10, dtype=np.int64))
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\x00" * 64)
        zf.writestr("y.npy", y.getvalue())
    with pytest.raises(DataError, match="array 'x' declares 8000000000000 bytes"):
        read_dataset_file(path)


def test_pickle_is_refused_as_dataset(tmp_path):
    path = tmp_path / "d.npz"
    np.arange(3).dump(path)
    with pytest.raises(FormatError, match="pickle"):
        read_dataset_file(path)


def _parquet(tmp_path, columns: dict):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _csv(tmp_path, text: str):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


def test_parquet_is_read(tmp_path):
    path = _parquet(tmp_path, {"a": [1.0, 2.0, 3.0], "label": [2, 0, 1], "b": pa.array([4, 5, 6], pa.int8())})
    ds = read_dataset_file(path)
    assert ds.x.tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]  # file order, label removed
    assert ds.y.tolist() == [2, 0, 1] and ds.num_classes == 3
    assert inspect_dataset_file(path).format == "parquet"


def test_csv_is_read(tmp_path):
    path = _csv(tmp_path, "f0,label,f1\n0.5,1,2\n-1e3,0,3.25\n")
    ds = read_dataset_file(path)
    assert ds.x.tolist() == [[0.5, 2.0], [-1000.0, 3.25]]
    assert ds.y.tolist() == [1, 0] and ds.input_shape == (2,)
    assert inspect_dataset_file(path).to_dict()["format"] == "csv"


@pytest.mark.parametrize("columns,reason", [
    ({"a": ["x", "y"], "label": [0, 1]}, "column 'a' has type string"),
    ({"a": [1.0, 2.0], "label": [0.0, 1.0]}, "column 'label' has type double"),
    ({"a": [1.0, None, None], "label": [0, 1, 1]}, "column 'a' has 2 missing values; first at row 1"),
    ({"a": [1.0, 2.0], "label": [0, None]}, "column 'label' has 1 missing values"),
    ({"a": [1.0, float("nan")], "label": [0, 1]}, "1 non-finite"),
    ({"label": [0, 1]}, "no feature columns"),
    ({"a": pa.array([], pa.float64()), "label": pa.array([], pa.int64())}, "no rows"),
    ({"a": [1.0, 2.0], "label": [0, -3]}, "must be >= 0, or -1"),
], ids=["string", "float-label", "nulls", "null-label", "nan", "no-features", "empty", "negative"])
def test_parquet_data_errors(tmp_path, columns, reason):
    with pytest.raises(DataError, match=reason):
        read_dataset_file(_parquet(tmp_path, columns))


@pytest.mark.parametrize("text,reason", [
    ("a,label\nx,0\ny,1\n", "column 'a' has type string"),
    ("a,label\n1,0.5\n2,1\n", "labels must be integers"),
    ("a,label\n1,0\n,1\n", "column 'a' has 1 missing values; first at row 1"),
    ("a,label\n1,0\ninf,1\n", "1 non-finite"),
    ("a,label\n", "no rows"),
    ("a,label\n1,0\n2,1\n3,1\n", "3 samples is over the limit of 2"),
], ids=["string", "float-label", "missing", "inf", "empty", "too-many"])
def test_csv_data_errors(tmp_path, text, reason):
    with pytest.raises(DataError, match=reason):
        read_dataset_file(_csv(tmp_path, text), max_samples=2)


# ---- splits ----

def _dataset(counts: list[int]) -> ArrayDataset:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)  # x = original index
    return ArrayDataset(x, y, len(counts) + 1)  # one class absent on purpose


def test_split_is_deterministic_disjoint_and_complete():
    ds = _dataset([50, 30, 20])
    train, val = split_train_val(ds, fraction=0.2, seed=3)
    train2, val2 = split_train_val(ds, fraction=0.2, seed=3)
    assert torch.equal(val.x, val2.x) and torch.equal(train.x, train2.x)
    ids = sorted(train.x.flatten().int().tolist() + val.x.flatten().int().tolist())
    assert ids == list(range(100))
    assert train.num_classes == val.num_classes == 4
    _, val3 = split_train_val(ds, fraction=0.2, seed=4)
    assert not torch.equal(val.x, val3.x)


def test_split_is_stratified():
    ds = _dataset([50, 30, 20, 1])
    _, val = split_train_val(ds, fraction=0.2, seed=0)
    assert torch.bincount(val.y, minlength=4).tolist() == [10, 6, 4, 0]  # a singleton class stays in train


def test_split_indices_match_the_dataset_split():
    ds = _dataset([9, 7, 5])
    train_rows, val_rows = split_indices(ds.y, fraction=0.3, seed=2)
    train, val = split_train_val(ds, fraction=0.3, seed=2)
    assert train_rows.dtype == torch.int64 and torch.equal(train_rows, torch.sort(train_rows).values)
    assert torch.equal(ds.x[val_rows], val.x) and torch.equal(ds.x[train_rows], train.x)
    scaled = train.map_x(lambda x: x * 2)
    assert torch.equal(scaled.x, train.x * 2) and torch.equal(scaled.y, train.y)


def test_split_keeps_val_non_empty():
    ds = _dataset([2, 1, 1])
    train, val = split_train_val(ds, fraction=0.1)
    assert val.num_samples == 1 and train.num_samples == 3
    with pytest.raises(DataError):
        split_train_val(_dataset([1]))


# ---- standardisation ----

def test_standardizer_uses_train_statistics_only():
    train = torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    val = torch.tensor([[100.0, 7.0]])
    s = Standardizer.fit(train)
    torch.testing.assert_close(s.mean, torch.tensor([2.0, 5.0]))
    assert s.std[1] == pytest.approx(1e-6)  # constant feature: floored, stays finite
    out = s.apply(train)
    torch.testing.assert_close(out[:, 0].mean(), torch.tensor(0.0))
    torch.testing.assert_close(out[:, 0].std(unbiased=False), torch.tensor(1.0))
    torch.testing.assert_close(s.apply(val)[0, 0], torch.tensor((100.0 - 2.0) / s.std[0].item()))


def test_standardizer_round_trips_through_json():
    x = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(0))
    s = Standardizer.fit(x)
    again = Standardizer.from_state_dict(json.loads(json.dumps(s.state_dict())))
    torch.testing.assert_close(again.apply(x), s.apply(x))
    with pytest.raises(ValueError):
        s.apply(torch.zeros(2, 6))


# ---- batching ----

def test_batcher_covers_every_index_once_per_epoch():
    b = IndexBatcher(103, 10, seed=7)
    batches = list(b.epoch(0))
    assert len(b) == len(batches) == 11
    assert all(t.dtype == torch.int64 for t in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert [len(t) for t in batches] == [10] * 10 + [3]


def test_batcher_order_is_a_function_of_seed_and_epoch():
    a = torch.cat(list(IndexBatcher(50, 8, seed=1).epoch(3)))
    b = torch.cat(list(IndexBatcher(50, 8, seed=1).epoch(3)))  # a fresh object: as after a resume
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.cat(list(IndexBatcher(50, 8, seed=1).epoch(4))))
    assert not torch.equal(a, torch.cat(list(IndexBatcher(50, 8, seed=2).epoch(3))))
    torch.manual_seed(0)  # the global RNG has no say
    assert torch.equal(a, torch.cat(list(IndexBatcher(50, 8, seed=1).epoch(3))))


def test_batcher_drop_last_and_no_shuffle():
    b = IndexBatcher(25, 10, drop_last=True, shuffle=False)
    assert len(b) == 2
    assert [t.tolist() for t in b.epoch(5)] == [list(range(10)), list(range(10, 20))]


def test_a_builtin_is_generated_once_and_each_caller_gets_its_own_copy(monkeypatch):
    """A worker runs many jobs on a builtin: generating mnist1d (about 4 s) or parsing digits each time
    was fixed cost per job. What a caller changes does not reach the next caller."""
    from kdcore import data

    import dataclasses

    calls = []
    builtin = data.DATASETS.get("digits")
    counting = dataclasses.replace(builtin, load=lambda: calls.append(1) or builtin.load())
    monkeypatch.setattr(data.DATASETS, "get", lambda name, **kw: counting)
    monkeypatch.setattr(data, "_BUILTIN_CACHE", {})
    first = data.load_builtin("digits")
    first["train"].y[:] = -1
    first["train"].num_classes = 3
    second = data.load_builtin("digits")
    assert len(calls) == 1
    assert int(second["train"].y.min()) == 0 and second["train"].num_classes == 10
    assert second["train"].x.data_ptr() != first["train"].x.data_ptr()
