"""The named limits on what a file's headers may make the service allocate (kdcore.formats,
kdcore.data), one by one, without the API: each refuses a file that lies or balloons, and none
refuses an honest file of the same shape."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from kdcore import data as kd_data
from kdcore import formats
from kdcore.data import read_dataset_file
from kdcore.errors import DataError, FormatError
from kdcore.formats import read_npz_headers, read_safetensors_header, sniff_format
from tests.security import hostile_files as h

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def refused_under(monkeypatch, limit: str, value: int, read, path, match: str, error=FormatError) -> None:
    """With kdcore.formats.<limit> lowered to `value`, read(path) raises `error` matching `match`."""
    monkeypatch.setattr(formats, limit, value)
    with pytest.raises(error, match=match):
        read(path)


# ---- honest files pass ----

def test_an_honest_compressed_npz_within_the_free_bytes_is_read(tmp_path):
    path = tmp_path / "d.npz"  # zeros compress 1000x, but 32 MiB is under EXPANSION_FREE_BYTES
    np.savez_compressed(path, x=np.zeros((1 << 20, 8), np.float32), y=np.zeros(1 << 20, np.int64))
    assert path.stat().st_size * formats.MAX_EXPANSION < 40 * 1024**2
    ds = read_dataset_file(path)
    assert ds.num_samples == 1 << 20 and ds.input_shape == (8,)


def test_an_honest_npz_reports_its_headers(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((3, 2), np.float64), y=np.arange(3), extra=np.zeros(0))
    headers = read_npz_headers(path)
    assert list(headers) == ["x", "y", "extra"]
    assert headers["x"].shape == (3, 2) and headers["x"].dtype == np.float64 and headers["x"].nbytes == 48
    assert headers["extra"].nbytes == 0


def test_a_torch_save_archive_with_many_tensors_is_still_named(tmp_path):
    import torch

    path = tmp_path / "big.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(3000)}, path)
    with pytest.raises(FormatError, match=r"torch\.save archive"):
        sniff_format(path)


# ---- zip directories ----

def test_member_count_is_read_from_the_end_record_before_parsing_the_directory(tmp_path, monkeypatch):
    path = h.many_members(tmp_path / "m.npz", 50)
    refused_under(monkeypatch, "MAX_ZIP_MEMBERS", 49, sniff_format, path,
                  r"50 members, over the limit of 49 \(MAX_ZIP_MEMBERS\)")
    monkeypatch.setattr(zipfile, "ZipFile", None)  # refused before zipfile is ever asked
    with pytest.raises(FormatError, match="MAX_ZIP_MEMBERS"):
        sniff_format(path)


def test_an_end_record_that_understates_the_count_is_still_caught(tmp_path, monkeypatch):
    path = h.many_members(tmp_path / "m.npz", 50)
    raw = bytearray(path.read_bytes())
    eocd = raw.rfind(b"PK\x05\x06")
    raw[eocd + 8:eocd + 12] = struct.pack("<HH", 1, 1)  # "1 entry"; the directory holds 50
    path.write_bytes(bytes(raw))
    refused_under(monkeypatch, "MAX_ZIP_MEMBERS", 49, sniff_format, path, r"50 members.*MAX_ZIP_MEMBERS")


def test_directory_size_is_capped(tmp_path, monkeypatch):
    path = h.many_members(tmp_path / "m.npz", 20)
    refused_under(monkeypatch, "MAX_ZIP_DIRECTORY_BYTES", 100, sniff_format, path,
                  r"directory is \d+ bytes, over the limit of 100 \(MAX_ZIP_DIRECTORY_BYTES\)")


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: h.Member(m.name, m.method, m.data, m.crc, m.size), None),
    (lambda m: h.Member(m.name, zipfile.ZIP_LZMA, m.data, m.crc, m.size), "compression method 14"),
    (lambda m: h.Member("x.txt", m.method, m.data, m.crc, m.size), "not an .npz"),
], ids=["honest", "lzma", "not-npy"])
def test_npz_members_must_be_plain_npy(tmp_path, mutate, reason):
    x = h.stored_member("x.npy", h.npy_bytes(np.zeros((2, 2), np.float32)))
    y = h.stored_member("y.npy", h.npy_bytes(np.zeros(2, np.int64)))
    path = h.write_zip(tmp_path / "d.npz", [mutate(x), y])
    if reason is None:
        assert read_dataset_file(path).num_samples == 2
    else:
        with pytest.raises((DataError, FormatError), match=reason):
            read_dataset_file(path)


def test_duplicate_and_encrypted_members_are_refused(tmp_path):
    x = h.stored_member("x.npy", h.npy_bytes(np.zeros((2, 2), np.float32)))
    y = h.stored_member("y.npy", h.npy_bytes(np.zeros(2, np.int64)))
    with pytest.raises(FormatError, match="appears more than once"):
        read_npz_headers(h.write_zip(tmp_path / "dup.npz", [x, y, x]))
    path = h.write_zip(tmp_path / "enc.npz", [x, y])
    raw = bytearray(path.read_bytes())
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 8:cd + 10] = struct.pack("<H", 1)  # general purpose flag bit 0: encrypted
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="encrypted"):
        read_npz_headers(path)


def test_a_header_that_declares_more_than_its_member_holds_is_refused(tmp_path):
    header = h.npy_header((1000, 1000), "<f4")  # 4 MB declared, 64 bytes present
    x = h.stored_member("x.npy", header + b"\0" * 64)
    with pytest.raises(FormatError, match=r"array 'x' declares 4000000 bytes but its member holds only 64"):
        read_npz_headers(h.write_zip(tmp_path / "lie.npz", [x]))


def test_the_expansion_limit_is_relative_to_the_file(tmp_path, monkeypatch):
    path = h.dataset_bomb(tmp_path / "b.npz", 4096, 64)  # 1 MiB + 32 KiB of zeros in about 1 KiB
    assert read_dataset_file(path).num_samples == 4096  # under EXPANSION_FREE_BYTES: fine
    refused_under(monkeypatch, "EXPANSION_FREE_BYTES", 1024, read_dataset_file, path,
                  r"times its size, over the limit of 100 times \(MAX_EXPANSION\)", error=DataError)


# ---- tables ----

def test_a_parquet_whose_columns_balloon_is_refused_unread(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    zeros = pa.array(np.zeros(1_000_000))  # one array shared by every column: 8 MB in memory
    table = pa.table({**{f"f{i}": zeros for i in range(10)}, "label": pa.array(np.zeros(1_000_000, np.int64))})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size < 1024**2  # 88 MB of values in a few hundred KB
    read = []
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, *a, **k: read.append(1))
    with pytest.raises(DataError, match=r"the columns decompress to 88000000 bytes .*MAX_EXPANSION"):
        read_dataset_file(path)
    assert read == []


def test_a_parquet_with_a_text_column_is_refused_before_decoding(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "text.parquet"
    pq.write_table(pa.table({"f0": ["x" * 1000] * 10, "label": list(range(10))}), path)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(DataError, match="column 'f0' has type string"):
        read_dataset_file(path)


def test_too_many_columns(tmp_path, monkeypatch):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"f{i}" for i in range(20)) + ",label\n" + ",".join(["1"] * 21) + "\n")
    monkeypatch.setattr(kd_data, "MAX_COLUMNS", 10)
    with pytest.raises(DataError, match=r"21 columns, over the limit of 10 \(MAX_COLUMNS\)"):
        read_dataset_file(path)


# ---- safetensors ----

def test_tensor_count_is_capped(tmp_path, monkeypatch):
    path = tmp_path / "many.safetensors"
    save_file({f"t{i}": np.zeros(1, np.float32) for i in range(20)}, str(path))
    assert len(read_safetensors_header(path)) == 20
    refused_under(monkeypatch, "MAX_SAFETENSORS_TENSORS", 10, read_safetensors_header, path,
                  r"over the limit of 10 tensors \(MAX_SAFETENSORS_TENSORS\)")


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}], ids=["no-metadata", "metadata"])
def test_the_tensor_limit_is_exact(tmp_path, monkeypatch, metadata):
    """MAX_SAFETENSORS_TENSORS tensors pass and one more is refused, with or without __metadata__
    (issue 16 item 10: the count included __metadata__ and compared with limit + 1, so 100,001
    tensors passed a limit of 100,000 in a file without it)."""
    monkeypatch.setattr(formats, "MAX_SAFETENSORS_TENSORS", 10)
    at_limit, over = tmp_path / "ten.safetensors", tmp_path / "eleven.safetensors"
    save_file({f"t{i}": np.zeros(1, np.float32) for i in range(10)}, str(at_limit), metadata=metadata)
    save_file({f"t{i}": np.zeros(1, np.float32) for i in range(11)}, str(over), metadata=metadata)
    assert len(formats.safetensors_tensor_names(read_safetensors_header(at_limit))) == 10
    with pytest.raises(FormatError, match=r"lists 11 tensors, over the limit of 10 tensors \(MAX_SAFETENSORS_TENSORS\)"):
        read_safetensors_header(over)


def test_inspecting_an_upload_at_the_tensor_limit_is_cheap(tmp_path):
    """What the API spends on one safetensors teacher upload (api.file_inspection.inspect_upload:
    the header, read by each step of the inspection, and a NaN/Inf check tensor by tensor) grows
    with its tensors. At the limit of 100,000 one upload cost 14 s of API CPU (issue 16 item 10;
    9.3 s measured here); MAX_SAFETENSORS_TENSORS = 10,000 keeps it near half a second (0.6 s
    measured here). CPU time of this thread, so other processes on the machine do not count."""
    import time

    from api.file_inspection import inspect_upload

    path = tmp_path / "many.safetensors"
    save_file({f"layer.{i}.weight": np.zeros(1, np.float32) for i in range(formats.MAX_SAFETENSORS_TENSORS)},
              str(path))
    started = time.thread_time()
    fmt, info = inspect_upload(path, "teacher")
    spent = time.thread_time() - started
    assert (fmt, info["tensors"]) == ("safetensors", formats.MAX_SAFETENSORS_TENSORS)
    assert spent < 2.5, f"{spent:.2f} s of CPU for {formats.MAX_SAFETENSORS_TENSORS} tensors"


def test_a_huge_name_is_not_echoed_whole(tmp_path):
    path = h.safetensors_raw(tmp_path / "n.safetensors", {"n" * 100_000: h.entry("Q9", [1], 0, 1)}, b"\0")
    with pytest.raises(FormatError) as info:
        read_safetensors_header(path)
    assert len(str(info.value)) < 1000


def test_a_deeply_nested_header_is_refused(tmp_path):
    path = h.safetensors_raw(tmp_path / "deep.safetensors", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(FormatError, match="not UTF-8 JSON|must have exactly"):
        read_safetensors_header(path)


def test_the_header_buffer_is_read_only_as_far_as_the_file_goes(tmp_path):
    raw = json.dumps({"w": h.entry("F32", [1], 0, 4)}).encode()
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", formats.MAX_SAFETENSORS_HEADER) + raw)  # claims 16 MiB, has 60 bytes
    with pytest.raises(FormatError, match="runs past the end"):
        read_safetensors_header(path)


def test_npy_header_size_is_bounded_by_numpy(tmp_path):
    buf = io.BytesIO()
    buf.write(b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 24))  # a 16 MiB header
    x = h.stored_member("x.npy", buf.getvalue() + b"{" + b" " * 100)
    with pytest.raises(FormatError, match="array 'x' is not a readable .npy array"):
        read_npz_headers(h.write_zip(tmp_path / "hdr.npz", [x]))
