"""What a user's file is, decided by its content, never by its name.

`sniff_format` returns one of FORMATS or raises FormatError naming what it found and what is
accepted. Refused on sight, because loading them runs code: pickle streams (including legacy
`torch.save` files and pickled numpy arrays), `torch.save` zip archives, TorchScript archives and
`torch.export` (.pt2) archives. Nothing here unpickles, imports or executes anything from the file.

Checks run cheapest first; ONNX, the only one that needs a full parse, runs last.
`read_safetensors_header` validates a safetensors header completely before anyone trusts it.
`read_npz_headers` sizes every array of an .npz from the zip directory and the .npy headers
before a byte of array data is decompressed, so a zip bomb is refused by arithmetic, not by
running out of memory.

Limits on what a header may make us allocate (each named in the message that enforces it):
zip archives: MAX_ZIP_MEMBERS members and a MAX_ZIP_DIRECTORY_BYTES central directory;
.npz: stored or deflated members only, at most MAX_DECODED_BYTES once decompressed, and
beyond EXPANSION_FREE_BYTES no more than MAX_EXPANSION times the file's size;
safetensors: a MAX_SAFETENSORS_HEADER header, MAX_SAFETENSORS_TENSORS tensors of rank at most
MAX_TENSOR_RANK, and every tensor inside the file.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickletools
import struct
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kdcore.errors import FormatError

FORMATS = ("safetensors", "onnx", "npz", "parquet", "csv")

# What each kind of upload may be, in words (for messages) and as sniffed formats (for checks).
ACCEPTED_FORMATS: dict[str, str] = {
    "teacher": "a safetensors state dict (with a registry architecture) or an ONNX graph",
    "teacher_logits": "precomputed logits: .npz with array 'logits' or safetensors with one tensor 'logits'",
    "dataset": ".npz with arrays 'x' and 'y', or Parquet or CSV with a 'label' column",
    "student_init": "a safetensors state dict",
}
FORMATS_BY_PURPOSE: dict[str, tuple[str, ...]] = {
    "teacher": ("safetensors", "onnx", "npz"),  # npz/safetensors may hold precomputed logits
    "teacher_logits": ("npz", "safetensors"),
    "dataset": ("npz", "parquet", "csv"),
    "student_init": ("safetensors",),
}

MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024  # bytes; real headers are kilobytes
# Tensors in one safetensors file. A ResNet-152 state dict has about 1,000. An upload's inspection
# costs API CPU per tensor (its header is parsed and checked, then every tensor is read and checked
# for NaN/Inf one by one): measured here 0.6 s at 10,000 tiny tensors, 9 s at 100,000 (14 s in the
# report of issue 16, item 10). The limit keeps one upload's inspection under about a second.
MAX_SAFETENSORS_TENSORS = 10_000
MAX_TENSOR_RANK = 32  # dimensions per tensor (weights have at most 5)
MAX_ZIP_MEMBERS = 10_000  # an .npz has a handful; a torch.save archive one per tensor
MAX_ZIP_DIRECTORY_BYTES = 4 * 1024 * 1024  # the central directory, parsed into memory before any member
MAX_DECODED_BYTES = 2 * 1024**3  # a file's arrays once decompressed/decoded (= the largest dataset file taken)
MAX_EXPANSION = 100  # decoded size / file size; past EXPANSION_FREE_BYTES a higher ratio is a bomb
EXPANSION_FREE_BYTES = 64 * 1024 * 1024  # contents this small may compress as well as they like
NPZ_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}  # what numpy.savez* writes
MAX_PICKLE_SCAN = 16 * 1024 * 1024  # protocol 0/1 pickles are recognised by an opcode scan up to this size
CSV_SNIFF_BYTES = 64 * 1024

# safetensors dtype -> bytes per element (the dtypes safetensors.torch can load).
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_PICKLE_WHY = "pickle is never loaded on the server: unpickling runs arbitrary code"
_CONVERT_HINT = ("convert it on your own machine, e.g. "
                 "safetensors.torch.save_file(model.state_dict(), 'teacher.safetensors')")


def accepted_message(purpose: str | None) -> str:
    """'accepted for a <purpose>: ...' or, without a purpose, every purpose's list."""
    if purpose is None:
        return "accepted: " + "; ".join(f"{p}: {ACCEPTED_FORMATS[p]}" for p in ACCEPTED_FORMATS)
    if purpose == "teacher":  # a teacher file may also be precomputed logits
        return f"accepted for a teacher: {ACCEPTED_FORMATS['teacher']}; or {ACCEPTED_FORMATS['teacher_logits']}"
    return f"accepted for {purpose.replace('_', ' ')}: {ACCEPTED_FORMATS[purpose]}"


def _refuse(found: str, purpose: str | None) -> FormatError:
    return FormatError(f"{found}; {accepted_message(purpose)}", field="file")


def sniff_format(path: str | os.PathLike, *, purpose: str | None = None) -> str:
    """Return "safetensors", "onnx", "npz", "parquet" or "csv" from the file's bytes.

    `purpose` (a key of ACCEPTED_FORMATS) only shapes the error message; use `check_format` to
    also refuse a well-formed file of the wrong kind.
    """
    if purpose is not None and purpose not in ACCEPTED_FORMATS:
        raise ValueError(f"unknown purpose {purpose!r}")
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise _refuse("the file is empty", purpose)
    with open(path, "rb") as f:
        head = f.read(64)
        f.seek(max(0, size - 4))
        tail = f.read(4)

    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        if head[1] == 2 and head[2:4] == b"\x8a\x0a" and head[4:14] == _TORCH_LEGACY_MAGIC:
            raise _refuse(f"a legacy (non-zip) torch.save file, which is a pickle; {_PICKLE_WHY}; "
                          f"{_CONVERT_HINT}", purpose)
        what = "a pickled numpy object" if b"numpy" in head else "a Python pickle stream"
        raise _refuse(f"{what} (protocol {head[1]}); {_PICKLE_WHY}", purpose)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _sniff_zip(path, purpose)
    if head[:6] == b"\x93NUMPY":
        raise _refuse(_describe_npy(head), purpose)
    if head[:4] == b"PAR1":
        if size >= 12 and tail == b"PAR1":
            return "parquet"
        raise _refuse("a truncated Parquet file (no PAR1 footer)", purpose)
    if head[:4] == b"PARE":
        raise _refuse("an encrypted Parquet file, which cannot be read", purpose)
    if _looks_like_safetensors(head, size):
        read_safetensors_header(path)
        return "safetensors"
    if tail.endswith(b".") and _is_old_pickle(path, size):
        raise _refuse(f"a Python pickle stream (protocol 0/1); {_PICKLE_WHY}", purpose)
    if _looks_like_csv(path):
        return "csv"
    if head[0] == 0x08:  # protobuf tag of ModelProto.ir_version, the field every ONNX file opens with
        try:
            read_onnx_model(path)
        except FormatError as exc:
            if exc.message.startswith("ONNX"):
                raise _refuse(exc.message, purpose) from None
        else:
            return "onnx"
    raise _refuse(f"an unrecognised file (starts with {head[:16]!r})", purpose)


def check_format(path: str | os.PathLike, purpose: str) -> str:
    """`sniff_format`, then refuse a format that `purpose` does not accept (e.g. CSV as a teacher)."""
    fmt = sniff_format(path, purpose=purpose)
    if fmt not in FORMATS_BY_PURPOSE[purpose]:
        raise _refuse(f"a {fmt} file", purpose)
    return fmt


# ---- zip archives: npz, or a torch archive that holds code or pickles ----

def _sniff_zip(path: Path, purpose: str | None) -> str:
    try:
        names = [info.filename for info in _zip_infolist(path)]
    except _ZipTooBig as exc:
        raise _refuse(str(exc), purpose) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise _refuse(f"a damaged zip archive ({exc})", purpose) from None
    if not names:
        raise _refuse("an empty zip archive", purpose)
    if all(n.endswith(".npy") for n in names):
        return "npz"  # numpy.load(allow_pickle=False) reads it safely whatever the member names
    base = [n.rsplit("/", 1)[-1] for n in names]
    if any(b == "archive_format" or b.startswith("serialized_exported_program") for b in base):
        raise _refuse("a torch.export (.pt2) archive; it holds a program and is refused", purpose)
    if any(b == "constants.pkl" for b in base) or any("/code/" in f"/{n}" for n in names):
        raise _refuse("a TorchScript archive; it holds code and is refused; export the weights as a "
                      "safetensors state dict or the model as ONNX", purpose)
    if any(b == "data.pkl" for b in base):
        raise _refuse(f"a torch.save archive, which holds a pickle; {_PICKLE_WHY}; {_CONVERT_HINT}", purpose)
    shown = ", ".join(_short(n, 60).strip("'\"") for n in names[:5]) + (", ..." if len(names) > 5 else "")
    raise _refuse(f"a zip archive that is not an .npz (members: {shown})", purpose)


class _ZipTooBig(Exception):
    """A zip archive whose directory alone is over the limits (a message for the user)."""


def _zip_directory_size(path: Path) -> tuple[int, int] | None:
    """(entries, central directory bytes) as the end-of-central-directory record declares them
    (ZIP64 aware), read from the file's tail without parsing the directory; None if not found."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = max(0, size - (22 + 65535))
        f.seek(start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        entries, cd_size = struct.unpack("<HI", tail[at + 10:at + 16])
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # ZIP64: the real figures are in the ZIP64 record
            loc = at - 20
            if loc < 0 or tail[loc:loc + 4] != b"PK\x06\x07":
                return entries, cd_size
            (record,) = struct.unpack("<Q", tail[loc + 8:loc + 16])
            f.seek(record)
            z64 = f.read(56)
            if len(z64) < 56 or z64[:4] != b"PK\x06\x06":
                return entries, cd_size
            entries, cd_size = struct.unpack("<QQ", z64[32:48])
    return entries, cd_size


def _zip_infolist(path: Path) -> list[zipfile.ZipInfo]:
    """The archive's members, once its directory is known to be small enough to parse
    (zipfile builds one object per entry before anyone can look at them)."""
    declared = _zip_directory_size(path)
    if declared is not None:
        entries, cd_size = declared
        if entries > MAX_ZIP_MEMBERS:
            raise _ZipTooBig(f"a zip archive of {entries} members, over the limit of {MAX_ZIP_MEMBERS} "
                             "(MAX_ZIP_MEMBERS)")
        if cd_size > MAX_ZIP_DIRECTORY_BYTES:
            raise _ZipTooBig(f"a zip archive whose directory is {cd_size} bytes, over the limit of "
                             f"{MAX_ZIP_DIRECTORY_BYTES} (MAX_ZIP_DIRECTORY_BYTES)")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:  # the end record lied about its count
        raise _ZipTooBig(f"a zip archive of {len(infos)} members, over the limit of {MAX_ZIP_MEMBERS} "
                         "(MAX_ZIP_MEMBERS)")
    return infos


@dataclass(frozen=True)
class NpyHeader:
    """One array of an .npz, as its .npy header declares it (nothing decompressed past the header)."""

    name: str  # the array's name: the member name without ".npy"
    shape: tuple[int, ...]
    dtype: Any  # numpy.dtype
    nbytes: int  # prod(shape) * itemsize


def read_npz_headers(path: str | os.PathLike) -> dict[str, NpyHeader]:
    """Size and type every array of an .npz before any of it is decompressed, and refuse what
    numpy.load(allow_pickle=False) must never be asked to read. Returns {array name: NpyHeader}
    in archive order. Raises FormatError(field="file") naming the member and the limit for:
    a directory over MAX_ZIP_MEMBERS / MAX_ZIP_DIRECTORY_BYTES; a member that is not .npy,
    duplicated, encrypted, or compressed other than stored/deflate; a header that is unreadable
    or declares Python objects; arrays (by the zip directory or by their headers, whichever is
    larger) over MAX_DECODED_BYTES in all, or past EXPANSION_FREE_BYTES more than
    MAX_EXPANSION times the file's size; a header that declares more data than its member holds.
    """
    import numpy as np  # late: sniffing needs no numpy

    path = Path(path)
    size = path.stat().st_size

    def bad(reason: str) -> FormatError:
        return FormatError(f"not a usable .npz: {reason}", field="file")

    try:
        infos = _zip_infolist(path)
    except _ZipTooBig as exc:
        raise bad(str(exc)) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise bad(f"a damaged zip archive ({exc})") from None
    seen: set[str] = set()
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise bad(f"member {_short(info.filename)} is not a .npy array")
        if info.filename in seen:
            raise bad(f"member {_short(info.filename)} appears more than once")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise bad(f"member {_short(info.filename)} is encrypted")
        if info.compress_type not in NPZ_COMPRESSIONS:
            raise bad(f"member {_short(info.filename)} uses zip compression method {info.compress_type}; only "
                      f"{' and '.join(NPZ_COMPRESSIONS.values())} (what numpy.savez and savez_compressed "
                      "write) are read")
        if info.file_size > MAX_DECODED_BYTES:
            raise bad(f"member {_short(info.filename)} decompresses to {info.file_size} bytes, over the limit of "
                      f"{MAX_DECODED_BYTES} (MAX_DECODED_BYTES)")
    _check_npz_total(sum(info.file_size for info in infos), size, bad)

    headers: dict[str, NpyHeader] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in infos:
                header = _read_npy_header(zf, info, np, bad)
                headers[header.name] = header
    except FormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, struct.error, NotImplementedError) as exc:
        raise bad(f"a damaged zip archive ({exc})") from None
    _check_npz_total(sum(h.nbytes for h in headers.values()), size, bad)
    return headers


def _read_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, np, bad) -> NpyHeader:
    fmt = np.lib.format
    name = info.filename[: -len(".npy")]
    with zf.open(info) as f:  # reads (and inflates) only as far as the header
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, TypeError, SyntaxError, OverflowError) as exc:
            if "allow_pickle" in str(exc) or "object" in str(exc).lower():
                raise bad(f"array {_short(name)} holds Python objects; object arrays are refused "
                          "(they are pickles)") from None
            raise bad(f"array {_short(name)} is not a readable .npy array: {exc}") from None
        header_len = f.tell()
    if dtype.hasobject:
        raise bad(f"array {_short(name)} holds Python objects; object arrays are refused (they are pickles)")
    shape = tuple(int(d) for d in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_DECODED_BYTES:
        raise bad(f"array {_short(name)} declares {nbytes} bytes, over the limit of {MAX_DECODED_BYTES} "
                  "(MAX_DECODED_BYTES)")
    if header_len + nbytes > info.file_size:
        raise bad(f"array {_short(name)} declares {nbytes} bytes but its member holds only "
                  f"{max(0, info.file_size - header_len)}")
    return NpyHeader(name, shape, dtype, nbytes)


def _check_npz_total(decoded: int, size: int, bad) -> None:
    try:
        check_decoded_size(decoded, size, what="the arrays")
    except FormatError as exc:
        raise bad(exc.message) from None


def check_decoded_size(decoded: int, size: int, *, what: str) -> None:
    """Refuse contents that would decode to `decoded` bytes from a `size` byte file when that is
    over MAX_DECODED_BYTES, or (past EXPANSION_FREE_BYTES) more than MAX_EXPANSION times `size`:
    the arithmetic of a decompression bomb, checked before anything is decoded."""
    if decoded > MAX_DECODED_BYTES:
        raise FormatError(f"{what} decompress to {decoded} bytes, over the limit of {MAX_DECODED_BYTES} "
                          "(MAX_DECODED_BYTES)", field="file")
    if decoded > EXPANSION_FREE_BYTES and decoded > MAX_EXPANSION * size:
        raise FormatError(f"{what} decompress to {decoded} bytes from a {size} byte file, "
                          f"{decoded // max(size, 1)} times its size, over the limit of {MAX_EXPANSION} times "
                          f"(MAX_EXPANSION) for contents over {EXPANSION_FREE_BYTES} bytes; this is how a "
                          "decompression bomb looks (store real data uncompressed)", field="file")


def _describe_npy(head: bytes) -> str:
    if b"'descr': '|O'" in head or b"'descr': 'O'" in head:
        return f"a bare .npy file of pickled objects; {_PICKLE_WHY}"
    return "a bare .npy array, not an .npz archive; save with numpy.savez (arrays 'x' and 'y', or 'logits')"


def _is_old_pickle(path: Path, size: int) -> bool:
    """Protocol 0/1 pickles have no magic number; recognise one by scanning its opcodes to STOP
    (pickletools only parses, it builds no objects)."""
    if size > MAX_PICKLE_SCAN:
        return False
    data = path.read_bytes()
    try:
        last = None
        for _opcode, _arg, pos in pickletools.genops(io.BytesIO(data)):
            last = pos
        return last == len(data) - 1
    except Exception:  # not a pickle: any parse error says so
        return False


def _looks_like_csv(path: Path) -> bool:
    """UTF-8 text whose first line is a comma-separated header of at least two non-empty names."""
    with open(path, "rb") as f:
        chunk = f.read(CSV_SNIFF_BYTES)
    if b"\x00" in chunk:
        return False
    if chunk.startswith(b"\xef\xbb\xbf"):
        chunk = chunk[3:]
    line, newline, _rest = chunk.partition(b"\n")
    if not newline and len(chunk) == CSV_SNIFF_BYTES:
        return False  # a first line longer than the sniff window is no header
    try:
        text = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return False
    if not text.isprintable():
        return False
    cells = [c.strip().strip('"').strip() for c in text.split(",")]
    return len(cells) >= 2 and all(cells)


# ---- safetensors ----

def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file opens with an 8-byte little-endian header length, then '{'. A length
    that cannot be right still marks it as safetensors unless those 8 bytes are text (a CSV or
    JSON file may have '{' at byte 8)."""
    if size < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    if n <= MAX_SAFETENSORS_HEADER and 8 + n <= size:
        return True
    return not head[:8].decode("latin-1").isprintable()


# The last headers read, by file identity (path, device, inode, size, mtime) and the limits they were
# checked against: one upload or one teacher load asks for its header up to four times (sniffing,
# logits or state dict, classes, shapes), and at 10,000 tensors each parse costs about 0.3 s. Only headers up to
# HEADER_CACHE_MAX_BYTES are kept, at most HEADER_CACHE_ENTRIES of them.
HEADER_CACHE_ENTRIES = 2
HEADER_CACHE_MAX_BYTES = 2 * 1024 * 1024
_headers: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
_headers_lock = threading.Lock()


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """Validate and return the header of a safetensors file: {name: {"dtype", "shape",
    "data_offsets"}, ...} plus "__metadata__" (str -> str) when the file has it. A file read again
    unchanged gives the same dict (do not modify it).

    Checked: an 8-byte little-endian length capped at MAX_SAFETENSORS_HEADER and inside the file;
    UTF-8 JSON object without duplicate keys; at most MAX_SAFETENSORS_TENSORS tensors; each
    tensor's dtype known, shape at most MAX_TENSOR_RANK non-negative ints whose sizes fit int64,
    byte size = prod(shape) * itemsize; offsets sorted, non-overlapping and covering the data
    buffer exactly (so no tensor can claim more memory than the file holds). Raises
    FormatError(field="file") with the reason.
    """
    path = Path(path)
    st = path.stat()
    # the limits too: a header is valid under the limits it was checked against
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
           MAX_SAFETENSORS_HEADER, MAX_SAFETENSORS_TENSORS, MAX_TENSOR_RANK)
    with _headers_lock:
        if key in _headers:
            _headers.move_to_end(key)
            return _headers[key]
    header, header_bytes = _parse_safetensors_header(path, st.st_size)
    if header_bytes <= HEADER_CACHE_MAX_BYTES:
        with _headers_lock:
            _headers[key] = header
            while len(_headers) > HEADER_CACHE_ENTRIES:
                _headers.popitem(last=False)
    return header


def _parse_safetensors_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    def bad(reason: str) -> FormatError:
        return FormatError(f"not a valid safetensors file: {reason}", field="file")

    if size < 8:
        raise bad(f"{size} bytes is too short for the 8-byte header length")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_SAFETENSORS_HEADER:
            raise bad(f"header length {n} bytes exceeds the {MAX_SAFETENSORS_HEADER} byte cap")
        if 8 + n > size:
            raise bad(f"header length {n} bytes runs past the end of the {size} byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")

    metadata = header.get("__metadata__")
    if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise bad("__metadata__ must map strings to strings")

    tensors = len(header) - ("__metadata__" in header)  # was len(header) > limit + 1: one more passed
    if tensors > MAX_SAFETENSORS_TENSORS:
        raise bad(f"header lists {tensors} tensors, over the limit of {MAX_SAFETENSORS_TENSORS} tensors "
                  "(MAX_SAFETENSORS_TENSORS)")
    buffer_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {_short(name)} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {_short(name)} has unknown dtype {_short(dtype)}; "
                      f"known: {', '.join(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {_short(name)} shape {_short(shape)} must be a list of integers >= 0")
        if len(shape) > MAX_TENSOR_RANK:
            raise bad(f"tensor {_short(name)} has {len(shape)} dimensions, over the limit of {MAX_TENSOR_RANK} "
                      "(MAX_TENSOR_RANK)")
        if math.prod(max(d, 1) for d in shape) >= 2**63:  # even an empty tensor needs int64 strides
            raise bad(f"tensor {_short(name)} shape {_short(shape)} overflows 64-bit sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise bad(f"tensor {_short(name)} data_offsets {_short(offsets)} must be two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_len:
            raise bad(f"tensor {_short(name)} data_offsets [{begin}, {end}] lie outside the "
                      f"{buffer_len} byte data buffer")
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if end - begin != expected:
            raise bad(f"tensor {_short(name)} spans {end - begin} bytes but {dtype} {_short(shape)} "
                      f"needs {expected}")
        spans.append((begin, end, name))

    spans.sort()
    position, previous = 0, None
    for begin, end, name in spans:
        if begin < position:
            raise bad(f"tensors {_short(previous)} and {_short(name)} overlap")
        if begin > position:
            raise bad(f"bytes {position}..{begin} of the data buffer belong to no tensor")
        position, previous = end, name
    if position != buffer_len:
        raise bad(f"{buffer_len - position} trailing bytes belong to no tensor")
    return header, n


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def safetensors_tensor_names(header: dict[str, Any]) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- ONNX ----

def read_onnx_model(path: str | os.PathLike):
    """Parse an ONNX file without following external data; accept it only with a graph of at
    least one input and one output, and no tensor stored outside the file (external data paths
    would let a graph read other files on the server). Returns the onnx.ModelProto."""
    import onnx  # late: only ONNX files pay for the import

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types on bytes that are not a model
        raise FormatError(f"not an ONNX model ({type(exc).__name__})", field="file") from None
    if not model.HasField("graph") or not model.graph.input or not model.graph.output:
        raise FormatError("not an ONNX model (no graph with inputs and outputs)", field="file")
    for tensor in _onnx_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise FormatError(f"ONNX graph with external data (tensor {tensor.name!r}) is refused; "
                              "export one self-contained file", field="file")
    return model


def _onnx_tensors(model) -> Iterator[Any]:
    def from_graph(graph) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from from_nodes(graph.node)

    def from_nodes(nodes) -> Iterator[Any]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for sub in attr.graphs:
                    yield from from_graph(sub)

    yield from from_graph(model.graph)
    for function in model.functions:
        yield from from_nodes(function.node)
