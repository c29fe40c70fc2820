"""NPY headers: what luigi_checkpoint.storage._npy writes numpy reads, and what it parses it checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib import format as npformat

from luigi_checkpoint.storage import _npy as npy
from luigi_checkpoint.storage.errors import BadNpyHeaderError

from .helpers_archive import laid_out

ARRAYS = {
    "c_order": np.arange(12, dtype="<f8").reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(12, dtype="<i2").reshape(3, 4)),
    "strided": np.arange(40, dtype="<u4").reshape(8, 5)[::3, ::2],
    "zero_d_big_endian": np.array(7, dtype=">i8"),
    "empty": np.zeros((0, 3), dtype="<c16"),
    "strings": np.array([b"ab", b"cde"], dtype="S3"),
    "structured": np.zeros(3, dtype=[("x", "<f4"), ("y", ">i2", (2,))]),
}


def _npy_stream(array: np.ndarray) -> bytes:
    return npy.header_bytes(array) + b"".join(bytes(c) for c in npy.array_chunks(array))


@pytest.mark.parametrize("name", list(ARRAYS))
def test_numpy_reads_what_is_written(name: str) -> None:
    array = ARRAYS[name]
    loaded = npformat.read_array(io.BytesIO(_npy_stream(array)))
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    assert np.array_equal(loaded, array)


@pytest.mark.parametrize("name", list(ARRAYS))
def test_headers_are_64_byte_multiples_and_parse_back(name: str) -> None:
    array = ARRAYS[name]
    header = npy.header_bytes(array)
    assert len(header) % 64 == 0 and header.endswith(b"\n")
    parsed = npy.parse_header(header, data_size=array.nbytes, where="x")
    assert (parsed.dtype, parsed.shape, parsed.size) == (array.dtype, array.shape, len(header))
    assert parsed.fortran_order == npy.is_written_fortran(array)


def test_fortran_arrays_are_written_in_fortran_order_without_copy() -> None:
    array = ARRAYS["fortran"]
    (chunk,) = npy.array_chunks(array)
    assert bytes(chunk) == array.tobytes(order="F")
    assert np.shares_memory(np.frombuffer(chunk, dtype=np.uint8), array)
    assert b"'fortran_order': True" in npy.header_bytes(array)


def test_contiguous_arrays_yield_their_own_memory() -> None:
    array = ARRAYS["c_order"]
    (chunk,) = npy.array_chunks(array)
    assert np.shares_memory(np.frombuffer(chunk, dtype=np.uint8), array)


@pytest.mark.parametrize(
    "shape", [(-1, 8), (2, -1)], ids=["many_small_rows", "rows_larger_than_a_chunk"]
)
def test_non_contiguous_arrays_are_copied_in_bounded_chunks(shape: tuple[int, int]) -> None:
    array = np.arange(10 << 20, dtype="<f8").reshape(shape)[:, ::2]  # 40 MiB of data
    chunks = list(npy.array_chunks(array))
    assert len(chunks) >= 3 and all(len(c) <= npy.COPY_CHUNK for c in chunks)
    assert b"".join(bytes(c) for c in chunks) == array.tobytes()


def test_non_latin1_field_names_use_version_3() -> None:
    array = np.zeros(2, dtype=[("\u03b1", "<f4")])
    header = npy.header_bytes(array)
    assert header[6:8] == b"\x03\x00"
    assert npformat.read_array(io.BytesIO(_npy_stream(array))).dtype == array.dtype


def test_headers_over_64_kib_use_version_2() -> None:
    array = np.zeros(1, dtype=[(f"field_{i:05d}", "<f4") for i in range(4000)])
    header = npy.header_bytes(array)
    assert header[6:8] == b"\x02\x00" and len(header) > 65536
    loaded = npformat.read_array(io.BytesIO(_npy_stream(array)), max_header_size=1 << 20)
    assert loaded.dtype == array.dtype


def _header_of(literal: bytes) -> bytes:
    body = literal + b" " * (-(len(literal) + 11) % 64) + b"\n"
    return npy.MAGIC + b"\x01\x00" + len(body).to_bytes(2, "little") + body


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        (b"{'descr': '|O', 'fortran_order': False, 'shape': (2,)}", "object dtype"),
        (b"{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}", "bad shape"),
        (b"{'descr': '<f8', 'fortran_order': 0, 'shape': (2,)}", "fortran_order"),
        (b"{'descr': '<f8', 'shape': (2,)}", "not a dict of"),
        (b"__import__('os').getcwd()", "bad NPY header"),
        (b"{'descr': 'no such type', 'fortran_order': False, 'shape': (2,)}", "bad NPY header"),
    ],
)
def test_bad_header_literals_are_refused(literal: bytes, message: str) -> None:
    with pytest.raises(BadNpyHeaderError, match=message) as info:
        npy.parse_header(_header_of(literal), data_size=16, where="archive.zip: member 'W'")
    assert "archive.zip: member 'W'" in str(info.value)


def test_shape_must_match_the_member_size() -> None:
    header = _header_of(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,)}")
    with pytest.raises(BadNpyHeaderError, match="8000000000 bytes.*holds 80 bytes"):
        npy.parse_header(header, data_size=80, where="a.zip")


@pytest.mark.parametrize(
    "prefix",
    [
        b"\x93NUMPZ\x01\x00\x10\x00",
        b"\x93NUMPY\x04\x00\x10\x00",
        b"\x93NUM",
        b"\x93NUMPY\x02\x00\x10\x00",
    ],
)
def test_bad_prefixes_are_refused(prefix: bytes) -> None:
    with pytest.raises(ValueError):
        npy.header_length(prefix)
    with pytest.raises(BadNpyHeaderError):
        npy.parse_header(prefix, data_size=0, where="a.zip")


_PREFIXES = st.builds(
    lambda magic, major, minor, rest: magic + bytes([major, minor]) + rest,
    st.sampled_from([npy.MAGIC, b"\x93NUMPZ", b"\x00NUMPY"]) | st.binary(min_size=6, max_size=6),
    st.integers(0, 4),
    st.sampled_from([0, 0, 1]),
    st.binary(min_size=4, max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(prefixes=st.lists(_PREFIXES, min_size=1, max_size=20))
def test_header_lengths_of_many_npys_agree_with_header_length_of_each(prefixes: list[bytes]) -> None:
    """The header lengths read at once (``header_lengths``, used when many small
    members are read together) are what ``header_length`` says of each prefix
    alone, and -1 exactly where it refuses one."""
    expected = []
    for prefix in prefixes:
        try:
            expected.append(npy.header_length(prefix))
        except ValueError:
            expected.append(-1)
    rows = np.frombuffer(b"".join(prefixes), np.uint8).reshape(len(prefixes), 12)
    assert npy.header_lengths(rows).tolist() == expected


LAID_OUT = st.builds(
    laid_out,
    st.builds(
        lambda dtype, shape: np.arange(int(np.prod(shape)), dtype="<i8").astype(dtype).reshape(shape),
        st.sampled_from(["<f4", ">f4", "<i2", "|u1", "?", "<c8", "S2", "<U1", "<M8[s]", [("x", "<f4"), ("y", ">i2")]]),
        st.sampled_from([(), (0,), (1,), (5,), (2, 3), (3, 1), (1, 4), (2, 0, 3)]),
    ),
    st.sampled_from(["c", "fortran", "transpose", "step", "reversed"]),
)


@settings(max_examples=200, deadline=None)
@given(arrays=st.lists(LAID_OUT, min_size=1, max_size=8))
def test_header_and_data_from_remembered_layouts_are_those_of_each_array(arrays: list[np.ndarray]) -> None:
    """Layouts are remembered by dtype, shape and strides: arrays met again
    (twice here, and others of the same layout) get the header numpy reads
    back as theirs and their own data, in the order that header declares."""
    for array in arrays * 2:
        header, data = npy.header_and_data(array)
        fortran = npy.is_written_fortran(array)
        parsed = npy.parse_header(header, data_size=array.nbytes, where="x")
        assert (parsed.dtype.descr, parsed.shape, parsed.fortran_order) == (array.dtype.descr, array.shape, fortran)
        if data is None:
            assert not (array.flags.c_contiguous or array.flags.f_contiguous)
            continue
        assert np.asarray(data).tobytes() == array.tobytes(order="F" if fortran else "C")
        assert array.size == 0 or np.shares_memory(np.asarray(data), array)
