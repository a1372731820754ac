"""Datasets: builtins generated offline, uploaded files validated, splits, scaling and batching.

Everything lives in memory as two tensors, `x` float32 (N, ...) and `y` int64 (N). Batches are
`x[idx]`, `y[idx]` for index tensors from `IndexBatcher`: no DataLoader, no per-sample collation,
and the order of every epoch is a pure function of (seed, epoch) so a resumed run replays it.

Uploaded files are never trusted: `read_dataset_file` sniffs the content (kdcore.formats), reads
.npz with allow_pickle=False, and raises DataError(field="file") naming the array or column at fault.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import threading
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from kdcore.errors import DataError, FormatError
from kdcore.formats import check_decoded_size, check_format, read_npz_headers
from kdcore.models.architecture import MAX_NUM_CLASSES
from kdcore.registry import Registry

MAX_DATASET_BYTES = 2 * 1024**3
MAX_SAMPLES = 10_000_000
MAX_COLUMNS = 100_000  # a Parquet/CSV table's columns (pyarrow builds one array per column)
LABEL_COLUMN = "label"
UNLABELED = -1  # the label of a row without one (in files and in ArrayDataset.y)


@dataclass
class ArrayDataset:
    """x: float32 (N, *input_shape); y: int64 (N,), UNLABELED (-1) where a row has no label.
    num_classes is stored, not derived, because a split (or a small test file) may lack a class;
    it is 0 for a file with no labelled row (the teacher then says how many classes there are)."""

    x: Tensor
    y: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x {tuple(self.x.shape)} and y {tuple(self.y.shape)} do not pair up")

    @property
    def num_samples(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def labeled(self) -> Tensor:
        """Boolean mask of the rows that carry a label."""
        return self.y != UNLABELED

    @property
    def num_labeled(self) -> int:
        return int(self.labeled.sum())

    def labeled_only(self) -> "ArrayDataset":
        return self.subset(self.labeled.nonzero().flatten())

    def subset(self, indices: Tensor) -> "ArrayDataset":
        return ArrayDataset(self.x[indices], self.y[indices], self.num_classes)

    def map_x(self, fn: Callable[[Tensor], Tensor]) -> "ArrayDataset":
        """The same samples with x replaced by fn(x) (e.g. a Standardizer's apply)."""
        return ArrayDataset(fn(self.x), self.y, self.num_classes)


@dataclass
class DatasetReport:
    """What upload validation stores about a dataset file (and a job spec is checked against)."""

    format: str
    num_samples: int
    input_shape: list[int]
    num_classes: int  # max label + 1; 0 when no row is labelled
    label_histogram: list[int]  # rows per class, labelled rows only
    num_labeled: int  # rows with a label (the others are inputs only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- builtins ----

@dataclass(frozen=True)
class Builtin:
    """A dataset that ships with the service. The shape facts are stated here so a job spec can be
    checked at POST time without generating the data (a test holds them to the generated data)."""

    load: Callable[[], dict[str, ArrayDataset]]
    input_shape: tuple[int, ...]
    num_classes: int
    num_samples: dict[str, int]
    description: str = ""

    def __call__(self) -> dict[str, ArrayDataset]:
        return self.load()

    def describe(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "num_samples": dict(self.num_samples), "description": self.description}


DATASETS: Registry[Builtin] = Registry("dataset")


def _mnist1d(num_samples: int = 5000) -> dict[str, ArrayDataset]:
    # mnist1d's own defaults, pinned here: 5000 samples, 80/20 split, seed 42. make_dataset seeds
    # numpy's and Python's global RNGs, so their state is put back afterwards. Never get_dataset:
    # it downloads a pickle. (num_samples exists for tests: generation takes seconds.)
    from mnist1d.data import get_dataset_args, make_dataset  # late: pulls in scipy and matplotlib

    args = get_dataset_args()
    args.seed, args.num_samples, args.train_split = 42, num_samples, 0.8
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "train": _from_numpy(data["x"], data["y"], 10),
        "test": _from_numpy(data["x_test"], data["y_test"], 10),
    }


def _digits() -> dict[str, ArrayDataset]:
    from sklearn.datasets import load_digits  # late: bundled with scikit-learn, no download

    bunch = load_digits()
    full = _from_numpy(bunch.data, bunch.target, 10)
    train, test = split_train_val(full, fraction=0.2, seed=0)  # fixed stratified 80/20
    return {"train": train, "test": test}


DATASETS.register("mnist1d")(Builtin(
    _mnist1d, (40,), 10, {"train": 4000, "test": 1000},
    "MNIST-1D, generated offline (about 4 s): 1-D signals of length 40, 10 classes"))
DATASETS.register("digits")(Builtin(
    _digits, (64,), 10, {"train": 1438, "test": 359},
    "scikit-learn 8x8 digits, pixels 0..16 flattened to 64, 10 classes, stratified 80/20 split"))


_BUILTIN_CACHE: dict[str, dict[str, ArrayDataset]] = {}
_BUILTIN_LOCK = threading.Lock()


def load_builtin(name: str) -> dict[str, ArrayDataset]:
    """{"train": ..., "test": ...} for a builtin; SpecError(field="dataset.builtin") if unknown.
    Generated once per process and kept in memory (mnist1d takes about 4 s to generate, digits
    about 20 ms to parse; each is under 1 MB), never on disk; every call gets its own copies, so a
    caller may change what it gets (a job relabels rows, sets num_classes)."""
    builtin = DATASETS.get(name, field="dataset.builtin")
    with _BUILTIN_LOCK:
        if name not in _BUILTIN_CACHE:
            _BUILTIN_CACHE[name] = builtin.load()
        cached = _BUILTIN_CACHE[name]
    return {split: ArrayDataset(d.x.clone(), d.y.clone(), d.num_classes) for split, d in cached.items()}


def describe_builtin(name: str) -> dict[str, Any]:
    """Input shape, classes and split sizes of a builtin, without generating it."""
    return DATASETS.get(name, field="dataset.builtin").describe()


def _from_numpy(x: np.ndarray, y: np.ndarray, num_classes: int) -> ArrayDataset:
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)), num_classes)


# ---- uploaded files ----

def read_dataset_file(
    path: str | os.PathLike,
    *,
    max_bytes: int = MAX_DATASET_BYTES,
    max_samples: int = MAX_SAMPLES,
    num_classes: int | None = None,
) -> ArrayDataset:
    """Read and validate a dataset upload (.npz with x and, optionally, y; Parquet or CSV with
    numeric feature columns and, optionally, a `label` column). Label -1 marks an unlabelled row;
    a file without labels has every row unlabelled. num_classes = max(label) + 1 unless given, in
    which case every label must be below it. Raises DataError(field="file") or FormatError."""
    return _read(Path(path), max_bytes, max_samples, num_classes)[1]


def inspect_dataset_file(
    path: str | os.PathLike, *, max_bytes: int = MAX_DATASET_BYTES, max_samples: int = MAX_SAMPLES
) -> DatasetReport:
    """Validate a dataset upload and summarise it (format, N, input shape, classes, label counts)."""
    fmt, ds = _read(Path(path), max_bytes, max_samples, None)
    histogram = torch.bincount(ds.y[ds.labeled], minlength=ds.num_classes).tolist()
    return DatasetReport(fmt, ds.num_samples, list(ds.input_shape), ds.num_classes, histogram, ds.num_labeled)


def _read(path: Path, max_bytes: int, max_samples: int, num_classes: int | None) -> tuple[str, ArrayDataset]:
    size = path.stat().st_size
    if size > max_bytes:
        raise _bad(f"the file is {size} bytes, over the {max_bytes} byte limit")
    fmt = check_format(path, "dataset")
    if fmt == "npz":
        x, y = _read_npz(path, max_samples)
    else:
        x, y = _read_table(path, fmt, max_samples)
    return fmt, _validated(x, y, num_classes)


def _bad(message: str) -> DataError:
    return DataError(message, field="file")


def _read_npz(path: Path, max_samples: int) -> tuple[np.ndarray, np.ndarray | None]:
    # Every array's size and dtype are known from the zip directory and the .npy headers before
    # any data is decompressed (kdcore.formats.read_npz_headers): object arrays, zip bombs and
    # oversized arrays are refused without loading them.
    try:
        headers = read_npz_headers(path)
    except FormatError as exc:
        raise _bad(exc.message) from None
    if "x" not in headers:
        found = ", ".join(sorted(headers)) or "none"
        raise _bad(f"the .npz has no array 'x' (found: {found}); it needs 'x' (float, N x ...) and, for "
                   "labelled rows, 'y' (integer labels, N; -1 for an unlabelled row)")
    x_shape, x_dtype = headers["x"].shape, headers["x"].dtype
    if x_dtype.kind not in "fiu":
        raise _bad(f"array 'x' has dtype {x_dtype}; it must be a float or integer array")
    if len(x_shape) < 2:
        raise _bad(f"array 'x' has shape {list(x_shape)}; it needs at least 2 dimensions (N, features...)")
    _check_features(x_shape)
    _check_count(x_shape[0], max_samples)
    if "y" not in headers:  # inputs only: every row unlabelled
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["x"], None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise _bad(f"cannot read the .npz arrays: {exc}") from None
    y_shape, y_dtype = headers["y"].shape, headers["y"].dtype
    if y_dtype.kind == "f":
        raise _bad(f"array 'y' has dtype {y_dtype}; labels must be an integer array (floats are refused, "
                   "even whole numbers: save y.astype('int64'))")
    if y_dtype.kind not in "iu":
        raise _bad(f"array 'y' has dtype {y_dtype}; labels must be an integer array")
    if len(y_shape) != 1:
        raise _bad(f"array 'y' has shape {list(y_shape)}; labels must be 1-D (N,)")
    if x_shape[0] != y_shape[0]:
        raise _bad(f"array 'x' has {x_shape[0]} samples but 'y' has {y_shape[0]}")
    _check_count(x_shape[0], max_samples)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["x"], npz["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # e.g. a header that lied
        raise _bad(f"cannot read the .npz arrays: {exc}") from None


def _read_table(path: Path, fmt: str, max_samples: int) -> tuple[np.ndarray, np.ndarray | None]:
    import pyarrow as pa  # late: only tables need pyarrow

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # Rows, columns and types come from the footer: a file whose values would decode to
            # more than the limits (Parquet's run-length and dictionary encodings compress a
            # constant column to nothing) or that holds non-numeric columns is refused unread.
            pf = pq.ParquetFile(path)
            _check_count(pf.metadata.num_rows, max_samples)
            _check_columns(pf.schema_arrow, pf.metadata.num_rows, pa)
            try:
                check_decoded_size(pf.metadata.num_rows * pf.metadata.num_columns * 8, path.stat().st_size,
                                   what="the columns")
            except FormatError as exc:
                raise _bad(exc.message) from None
            table = pf.read()
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise _bad(f"cannot read the {fmt} file: {exc}") from None
    _check_count(table.num_rows, max_samples)
    _check_columns(table.schema, table.num_rows, pa)

    label = table.column(LABEL_COLUMN) if LABEL_COLUMN in table.column_names else None
    if label is not None:
        _check_no_nulls(label, LABEL_COLUMN)
    features = [n for n in table.column_names if n != LABEL_COLUMN]
    for name in features:
        _check_no_nulls(table.column(name), name)
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = table.column(name).to_numpy()
    return x, None if label is None else label.to_numpy()


def _check_columns(schema, num_rows: int, pa) -> None:
    """An optional `label` integer column and at least one other column, every one numeric, names
    unique, and at least one row."""
    names = schema.names
    if len(names) > MAX_COLUMNS:
        raise _bad(f"{len(names)} columns, over the limit of {MAX_COLUMNS} (MAX_COLUMNS); "
                   "save wide data as .npz")
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise _bad(f"column names appear more than once: {', '.join(duplicated)}")
    features = [n for n in names if n != LABEL_COLUMN]
    if not features:
        raise _bad(f"no feature columns besides {LABEL_COLUMN!r}")
    if num_rows == 0:
        raise _bad("the file has no rows")
    label_type = schema.field(LABEL_COLUMN).type if LABEL_COLUMN in names else pa.int64()
    if pa.types.is_floating(label_type):
        raise _bad(f"column {LABEL_COLUMN!r} has type {label_type}; labels must be integers "
                   "(floats are refused, even whole numbers)")
    if not pa.types.is_integer(label_type):
        raise _bad(f"column {LABEL_COLUMN!r} has type {label_type}; labels must be integers")
    for name in features:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise _bad(f"column {name!r} has type {kind}; every column other than "
                       f"{LABEL_COLUMN!r} must be numeric")


def _check_no_nulls(column, name: str) -> None:
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise _bad(f"column {name!r} has {column.null_count} missing values; first at row {first}")


def _check_features(x_shape: tuple[int, ...]) -> None:
    """Each sample must have at least one feature: an x of shape (N, 0) (or any 0 past N) has none,
    and no model can learn from it."""
    if math.prod(x_shape[1:]) == 0:
        raise _bad(f"array 'x' has shape {list(x_shape)}: each sample has 0 features; a dataset needs at "
                   "least one (a dimension after N is 0)")


def _check_count(n: int, max_samples: int) -> None:
    if n > max_samples:
        raise _bad(f"{n} samples is over the limit of {max_samples}")


def _validated(x: np.ndarray, y: np.ndarray | None, num_classes: int | None) -> ArrayDataset:
    if y is None:
        y = np.full(x.shape[0], UNLABELED, dtype=np.int64)
    n = int(y.shape[0])
    if n == 0:
        raise _bad("the dataset is empty (0 samples)")
    _check_features(tuple(x.shape))
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    finite = torch.isfinite(xt).reshape(n, -1)
    if not bool(finite.all()):
        bad_count = int((~finite).sum())
        first = int((~finite).any(dim=1).nonzero()[0, 0])
        raise _bad(f"x has {bad_count} non-finite values (NaN or infinite after conversion to float32); "
                   f"first in sample {first}")
    if np.issubdtype(y.dtype, np.signedinteger) and (y < UNLABELED).any():
        first = int(np.flatnonzero(y < UNLABELED)[0])
        raise _bad(f"labels must be >= 0, or -1 for an unlabelled row; sample {first} has label {int(y[first])}")
    top = int(y.max())
    limit = num_classes if num_classes is not None else MAX_NUM_CLASSES
    if top >= limit:
        first = int(np.flatnonzero(y >= limit)[0])
        what = f"num_classes = {num_classes}" if num_classes is not None else f"at most {MAX_NUM_CLASSES} classes"
        raise _bad(f"labels must be below {limit} ({what}); sample {first} has label {int(y[first])}")
    yt = torch.from_numpy(y.astype(np.int64))
    classes = num_classes if num_classes is not None else max(top + 1, 0)
    return ArrayDataset(xt, yt, classes)


# ---- splits ----

def split_indices(y: Tensor, *, fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train_rows, val_rows), sorted int64 indices into `y`. About `fraction` of each class goes
    to validation (a class with one sample stays in train), at least one sample overall.
    A pure function of (y, fraction, seed)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    n = int(y.shape[0])
    if n < 2:
        raise DataError(f"{n} sample(s) cannot be split into train and validation", field="dataset")
    g = torch.Generator().manual_seed(_seed_of("split", seed))
    val_parts: list[Tensor] = []
    leftovers: list[Tensor] = []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        k = min(math.floor(fraction * len(members) + 0.5), len(members) - 1)
        val_parts.append(members[:k])
        leftovers.append(members[k:])
    val = torch.cat(val_parts)
    if len(val) == 0:  # every class too small for its share: take one from the largest class
        val = max(leftovers, key=len)[:1]
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


def split_train_val(ds: ArrayDataset, *, fraction: float = 0.1, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """`split_indices` applied to a dataset; both parts keep ds's order and num_classes."""
    train_rows, val_rows = split_indices(ds.y, fraction=fraction, seed=seed)
    return ds.subset(train_rows), ds.subset(val_rows)


def keep_labels_per_class(ds: ArrayDataset, per_class: int, *, seed: int = 0) -> ArrayDataset:
    """The same rows with at most `per_class` labels kept per class (a seeded random choice within
    each class) and every other label replaced by UNLABELED. A pure function of (ds.y, per_class, seed)."""
    g = torch.Generator().manual_seed(_seed_of("labels_per_class", seed))
    y = ds.y.clone()
    for c in torch.unique(ds.y).tolist():
        if c == UNLABELED:
            continue
        members = (ds.y == c).nonzero().flatten()
        dropped = members[torch.randperm(len(members), generator=g)][per_class:]
        y[dropped] = UNLABELED
    return ArrayDataset(ds.x, y, ds.num_classes)


# ---- scaling ----

class Standardizer:
    """Per-feature (x - mean) / std, fitted on the training split only so no statistic leaks from
    validation or test data. std is floored at 1e-6 so constant features stay finite."""

    STD_FLOOR = 1e-6

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None):
        self.mean = mean
        self.std = std

    @classmethod
    def fit(cls, x: Tensor) -> "Standardizer":
        """A new Standardizer with the statistics of `x` (pass the training split only)."""
        x64 = x.to(torch.float64)
        mean = x64.mean(dim=0).to(torch.float32)
        std = x64.std(dim=0, unbiased=False).clamp_min(cls.STD_FLOOR).to(torch.float32)
        return cls(mean, std)

    def apply(self, x: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer.apply before fit")
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"fitted on samples of shape {list(self.mean.shape)}, got {list(x.shape[1:])}")
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def state_dict(self) -> dict[str, Any]:
        """Plain (nested) lists, so it can go into JSON metadata."""
        if self.mean is None or self.std is None:
            raise RuntimeError("Standardizer.state_dict before fit")
        return {"shape": list(self.mean.shape), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Standardizer":
        shape = tuple(state["shape"])
        mean = torch.tensor(state["mean"], dtype=torch.float32).reshape(shape)
        std = torch.tensor(state["std"], dtype=torch.float32).reshape(shape)
        return cls(mean, std)


# ---- batching ----

def _seed_of(*parts: object) -> int:
    """A 63-bit generator seed from e.g. ("batches", seed, epoch): hashed, so nearby inputs give
    unrelated orders and no arithmetic overflows for any seed."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class IndexBatcher:
    """Yields int64 index tensors per epoch; the order is a pure function of (seed, epoch), so a
    run resumed at epoch k sees exactly the batches an uninterrupted run would."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if num_samples < 0 or batch_size < 1:
            raise ValueError(f"need num_samples >= 0 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples, dtype=torch.int64)
        g = torch.Generator().manual_seed(_seed_of("batches", self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g, dtype=torch.int64)

    def epoch(self, epoch: int) -> Iterator[Tensor]:
        order = self.order(epoch)
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


__all__ = [
    "ArrayDataset", "Builtin", "DATASETS", "DatasetReport", "IndexBatcher", "Standardizer",
    "UNLABELED", "describe_builtin", "inspect_dataset_file", "keep_labels_per_class", "load_builtin", "read_dataset_file", "split_indices",
    "split_train_val",
]
