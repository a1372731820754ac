"""Builders of hostile uploads for the security tests: pickles that run code when loaded, torch
archives, zip bombs, lying safetensors headers, object arrays and non-finite values.

The zip bombs are real: their members inflate to the sizes they declare (4 GiB of zeros from a
few MiB). They are written by hand (`write_zip`) from a deflate stream built by repeating one
full-flushed block, so making a 4 GiB bomb takes a couple of seconds instead of compressing
4 GiB.
"""

from __future__ import annotations

import bz2
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GIB = 1024**3
MIB = 1024**2
_CHUNK = 16 * MIB


class Marker:
    """Unpickling this creates a file: the proof that a pickle was (or was not) executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- zip archives written by hand (so members can lie, overlap or inflate to gigabytes) ----

@dataclass
class Member:
    name: str
    method: int  # zipfile.ZIP_STORED, ZIP_DEFLATED, ZIP_BZIP2
    data: bytes  # as stored in the archive (compressed)
    crc: int
    size: int  # uncompressed


def write_zip(path: Path, members: list[Member], *, extra_central_entries: int = 0) -> Path:
    """A ZIP64 archive of `members`. `extra_central_entries` > 0 adds that many central directory
    entries that all point at the first member's local header (an overlapping-entries bomb)."""
    out = bytearray()
    central = []
    for m in members:
        offset = len(out)
        extra = struct.pack("<HHQQ", 0x0001, 16, m.size, len(m.data))
        name = m.name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, m.method, 0, 0x21, m.crc,
                           0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra)) + name + extra
        out += m.data
        central.append((m, name, extra, offset))
    first = central[0]
    for i in range(extra_central_entries):
        m = first[0]
        central.append((m, f"overlap{i}.npy".encode(), first[2], first[3]))
    cd_start = len(out)
    for m, name, extra, offset in central:
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, m.method, 0, 0x21, m.crc,
                           0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, offset) + name + extra
    cd_size = len(out) - cd_start
    z64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(central), len(central), cd_size, cd_start)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(bytes(out))
    return path


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def deflated_zeros_member(name: str, shape: tuple[int, ...], dtype: str) -> Member:
    """An .npy member holding prod(shape) zeros of `dtype`, deflated (about 1 KiB per MiB)."""
    header = npy_header(shape, dtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [c.compress(header), c.flush(zlib.Z_FULL_FLUSH)]
    block = c.compress(bytes(_CHUNK)) + c.flush(zlib.Z_FULL_FLUSH)  # after a full flush: the same every time
    full, rest = divmod(nbytes, _CHUNK)
    parts += [block] * full
    if rest:
        parts.append(c.compress(bytes(rest)))
    parts.append(c.flush())
    return Member(name, zipfile.ZIP_DEFLATED, b"".join(parts), _crc_of_zeros(nbytes, zlib.crc32(header)),
                  len(header) + nbytes)


def _crc_of_zeros(n: int, crc: int) -> int:
    zeros = bytes(_CHUNK)
    full, rest = divmod(n, _CHUNK)
    for _ in range(full):
        crc = zlib.crc32(zeros, crc)
    return zlib.crc32(bytes(rest), crc)


def stored_member(name: str, data: bytes) -> Member:
    return Member(name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


# ---- the bombs ----

def dataset_bomb(path: Path, rows: int, cols: int) -> Path:
    """x float32 (rows, cols) and y int64 (rows,), all zeros, deflated to about 1/1000: a valid
    dataset in every respect its headers show (shapes, dtypes, sample count) except its size."""
    return write_zip(path, [deflated_zeros_member("x.npy", (rows, cols), "<f4"),
                            deflated_zeros_member("y.npy", (rows,), "<i8")])


def logits_bomb(path: Path, rows: int, classes: int) -> Path:
    return write_zip(path, [deflated_zeros_member("logits.npy", (rows, classes), "<f4")])


def bzip2_bomb(path: Path) -> Path:
    """x: 64 MiB of zeros in about a hundred bytes (bzip2 does far better than deflate's 1:1032);
    y: the matching labels, deflated."""
    rows = 4 * MIB
    header = npy_header((rows, 4), "<f4")
    nbytes = rows * 4 * 4
    c = bz2.BZ2Compressor(9)
    data = c.compress(header) + c.compress(bytes(nbytes)) + c.flush()
    member = Member("x.npy", zipfile.ZIP_BZIP2, data, _crc_of_zeros(nbytes, zlib.crc32(header)),
                    len(header) + nbytes)
    return write_zip(path, [member, deflated_zeros_member("y.npy", (rows,), "<i8")])


def many_members(path: Path, count: int) -> Path:
    """An .npz of `count` tiny arrays (zipfile builds one object per directory entry)."""
    member = npy_bytes(np.zeros(1, np.float32))
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            zf.writestr(f"a{i}.npy", member)
    return path


def zip_of_zips(path: Path, inner: Path, copies: int) -> Path:
    """A zip whose members are .npz bombs themselves (a recursive bomb)."""
    data = inner.read_bytes()
    return write_zip(path, [stored_member(f"part{i}.npz", data) for i in range(copies)])


def npy_that_is_a_zip(path: Path, inner: Path) -> Path:
    """An .npz whose 'x.npy' is not an array but another zip bomb."""
    return write_zip(path, [stored_member("x.npy", inner.read_bytes()),
                            stored_member("y.npy", npy_bytes(np.zeros(4, np.int64)))])


def overlapping_entries(path: Path, copies: int) -> Path:
    """One 64 MiB deflated kernel, referenced by `copies` + 1 directory entries (Fifield's
    non-recursive bomb): each entry alone is modest, together they are gigabytes."""
    return write_zip(path, [deflated_zeros_member("x.npy", (16 * MIB,), "<f4")], extra_central_entries=copies)


# ---- safetensors with lying headers ----

def safetensors_raw(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
