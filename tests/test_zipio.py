"""The streaming ZIP writer and the validating ZIP reader, on their own."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import zipfile
from typing import Any

import fsspec
import pytest

from luigi_checkpoint.storage.errors import (
    ArchiveError,
    ArchiveTooLargeError,
    ChecksumError,
    MissingMemberError,
    NotAnArchiveError,
    TruncatedArchiveError,
)
from luigi_checkpoint.storage._zipread import ZipReader
from luigi_checkpoint.storage._zipwrite import ZipWriter

PAYLOADS = {
    "a/first": random.Random(0).randbytes(3000),
    "b": b"x" * 100_000,
    "\u00e9t\u00e9": b"",
    "pkl": b"end",
}


class SequentialSink:
    """A destination that can only be appended to (like a pipe or an upload)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


def _archive(compression: str = "stored", force_zip64: bool = False, align: int = 64) -> bytes:
    sink = SequentialSink()
    writer = ZipWriter(sink, compression=compression, force_zip64=force_zip64)
    for name, data in PAYLOADS.items():
        writer.add(name, [data[:7], data[7:]], size=len(data), align=align)
    writer.close()
    return sink.value()


def _reader(data: bytes) -> ZipReader:
    return ZipReader(io.BytesIO(data), source="test.zip")


@pytest.mark.parametrize("compression", ["stored", "deflate"])
@pytest.mark.parametrize("force_zip64", [False, True])
def test_python_zipfile_reads_what_is_written(compression: str, force_zip64: bool) -> None:
    with zipfile.ZipFile(io.BytesIO(_archive(compression, force_zip64))) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == list(PAYLOADS)
        assert {name: zf.read(name) for name in zf.namelist()} == PAYLOADS
        assert {i.compress_type for i in zf.infolist()} == {
            zipfile.ZIP_STORED if compression == "stored" else zipfile.ZIP_DEFLATED
        }


@pytest.mark.parametrize("force_zip64", [False, True])
def test_info_zip_unzip_tests_the_archive_clean(tmp_path: Any, force_zip64: bool) -> None:
    path = tmp_path / "a.zip"
    path.write_bytes(_archive("deflate", force_zip64))
    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout


@pytest.mark.parametrize("compression", ["stored", "deflate"])
@pytest.mark.parametrize("force_zip64", [False, True])
def test_reader_round_trips_the_writer(compression: str, force_zip64: bool) -> None:
    reader = _reader(_archive(compression, force_zip64))
    assert list(reader.members) == list(PAYLOADS)
    assert {name: reader.read(name) for name in reader.members} == PAYLOADS


def test_stored_member_data_is_64_byte_aligned_and_sits_where_reported() -> None:
    sink = SequentialSink()
    writer = ZipWriter(sink)
    written = [
        writer.add(name, [data], size=len(data), align=64) for name, data in PAYLOADS.items()
    ]
    writer.close()
    data = sink.value()
    reader = _reader(data)
    for member in written:
        assert member.data_offset % 64 == 0
        assert reader.data_offset(reader.member(member.name)) == member.data_offset
        assert data[member.data_offset : member.data_offset + member.size] == PAYLOADS[member.name]


def test_written_sizes_must_match_the_announced_size() -> None:
    writer = ZipWriter(SequentialSink())
    with pytest.raises(ValueError, match="announced 5 bytes, got 3"):
        writer.add("x", [b"abc"], size=5)


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="compression"):
        ZipWriter(SequentialSink(), compression="lzma")


def _python_zip(**options: Any) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", **options) as zf:
        zf.comment = b"a comment"
        for name, data in PAYLOADS.items():
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(data)
    return buffer.getvalue()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_reader_reads_python_zipfile_archives_with_zip64_and_a_comment(compression: int) -> None:
    reader = _reader(_python_zip(compression=compression))
    assert {name: reader.read(name) for name in reader.members} == PAYLOADS


def test_reader_works_on_a_remote_fsspec_file() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/zips/a.zip", _archive("deflate"))
    with fs.open("/zips/a.zip", "rb") as f:
        assert ZipReader(f, source="memory://zips/a.zip").read("b") == PAYLOADS["b"]


def test_missing_member_names_the_archive() -> None:
    with pytest.raises(MissingMemberError, match="test.zip: no member 'nope'"):
        _reader(_archive()).open("nope")


@pytest.mark.parametrize("data", [b"", b"hello world" * 10, b"\x89PNG\r\n" + bytes(100)])
def test_non_zip_bytes_are_not_an_archive(data: bytes) -> None:
    with pytest.raises(NotAnArchiveError, match="test.zip: not a ZIP"):
        _reader(data)


def test_every_truncation_is_an_archive_error() -> None:
    data = _archive("deflate")
    for cut in range(len(data)):
        with pytest.raises(ArchiveError, match="test.zip"):
            reader = _reader(data[:cut])
            for name in reader.members:
                reader.read(name)


def test_a_cut_archive_starting_as_a_zip_is_reported_truncated() -> None:
    with pytest.raises(TruncatedArchiveError, match="truncated"):
        _reader(_archive()[:-30])


def _patch_central(data: bytes, name: str, field: str, value: int) -> bytes:
    """Overwrite one 4-byte field of ``name``'s central directory entry."""
    offsets = {"crc": 16, "compressed": 20, "size": 24, "offset": 42}
    position = data.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", data, position + 28)[0]
        if data[position + 46 : position + 46 + name_len] == name.encode():
            break
        position = data.index(b"PK\x01\x02", position + 4)
    field_offset = position + offsets[field]
    return data[:field_offset] + struct.pack("<L", value) + data[field_offset + 4 :]


def test_a_crc_mismatch_is_a_checksum_error() -> None:
    data = _patch_central(_archive(), "b", "crc", 12345)
    with pytest.raises(ChecksumError, match="member 'b': CRC-32 mismatch"):
        _reader(data).read("b")


def test_a_flipped_data_byte_is_a_checksum_error() -> None:
    data = bytearray(_archive())
    data[data.index(b"x" * 100) + 50] ^= 0x01
    with pytest.raises(ChecksumError):
        _reader(bytes(data)).read("b")


def test_a_deflate_member_declaring_a_gigantic_size_is_a_zip_bomb() -> None:
    data = _patch_central(_archive("deflate"), "b", "size", 0xFFFF0000)
    with pytest.raises(ArchiveTooLargeError, match="member 'b' declares 4294901760 bytes"):
        _reader(data)


def test_a_deflate_member_inflating_past_its_declared_size_is_refused() -> None:
    data = _patch_central(_archive("deflate"), "b", "size", 50_000)
    with pytest.raises(ArchiveTooLargeError, match="inflates beyond"):
        _reader(data).read("b")


def test_a_stored_member_whose_sizes_disagree_is_refused() -> None:
    data = _patch_central(_archive(), "b", "size", 10**9)
    with pytest.raises(ArchiveTooLargeError, match="declares 1000000000 bytes but holds"):
        _reader(data)


def test_members_reaching_into_the_central_directory_are_refused() -> None:
    data = _archive()
    data = _patch_central(data, "b", "compressed", 10**6)
    data = _patch_central(data, "b", "size", 10**6)
    with pytest.raises(TruncatedArchiveError, match="extends past the central directory"):
        _reader(data)


def test_overlapping_members_are_refused() -> None:
    with pytest.raises(NotAnArchiveError, match="overlaps"):
        _reader(_patch_central(_archive(), "b", "offset", 0))


def test_duplicate_member_names_are_refused() -> None:
    buffer = io.BytesIO()
    with pytest.warns(UserWarning), zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("same", b"1")
        zf.writestr("same", b"2")
    with pytest.raises(NotAnArchiveError, match="duplicate member 'same'"):
        _reader(buffer.getvalue())


def test_a_member_count_beyond_the_directory_size_is_refused() -> None:
    data = bytearray(_archive())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 60000, 60000)
    with pytest.raises(NotAnArchiveError, match="60000 members cannot fit"):
        _reader(bytes(data))


def test_unsupported_compression_methods_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("b", b"data")
    with pytest.raises(ArchiveError, match="unsupported compression method 12"):
        _reader(buffer.getvalue())


def test_a_local_header_naming_another_member_is_refused() -> None:
    sink = SequentialSink()
    writer = ZipWriter(sink)
    writer.add("a", [b"1"], size=1)
    second = writer.add("b", [b"2"], size=1)
    writer.close()
    data = bytearray(sink.value())
    data[second.header_offset + 30] = ord("c")
    with pytest.raises(NotAnArchiveError, match="member 'b': local header names b'c'"):
        _reader(bytes(data)).open("b")


def test_raw_files_writing_fewer_bytes_than_asked_get_the_rest(tmp_path: Any) -> None:
    path = tmp_path / "raw.zip"
    with open(path, "wb", buffering=0) as raw:

        class Trickle:
            def write(self, data: Any) -> int:
                return raw.write(memoryview(data)[:1000])

        writer = ZipWriter(Trickle())
        writer.add("b", [PAYLOADS["b"]], size=len(PAYLOADS["b"]))
        writer.close()
    with zipfile.ZipFile(path) as zf:
        assert zf.read("b") == PAYLOADS["b"]
