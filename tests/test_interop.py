"""Differential tests: what reference writers write, our readers read; what we
write, reference readers read.

The references are Python's ``zipfile``, numpy (``numpy.lib.format``,
``np.save``, ``np.savez``, ``np.savez_compressed``, ``np.load``) and three
tools from Debian: Info-ZIP ``zip``/``unzip`` (packages ``zip``, ``unzip``),
7-Zip (``p7zip-full``) and libarchive's ``bsdtar`` (``libarchive-tools``).
A missing tool fails its test, naming the package.

Property tests are deterministic (derandomized, no example database) and
small. Block edges are exercised with the reader's output block shrunk to
:data:`SMALL_BLOCK`; the real 16 MiB edges are in ``test_zipio``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .helpers_archive import (
    RawMember,
    Ref,
    assert_array_exact,
    build_zip,
    pickle_with_ids,
    ref_ids,
)
from luigi_checkpoint.storage import _npy as npy
from luigi_checkpoint.storage import _zipread as zipread
from luigi_checkpoint.storage._zipread import ZipReader
from luigi_checkpoint.storage._zipwrite import ZipWriter
from luigi_checkpoint.storage.archive import dump, load, read_arrays, verify
from luigi_checkpoint.storage.errors import ArchiveError

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SMALL_BLOCK = 4096

# ----------------------------------------------------------------- strategies

names = st.text(alphabet="abcXYZ019_-/\u00e9\u4e2d", min_size=1, max_size=12).filter(
    lambda n: not n.startswith("/") and not n.endswith("/")
)
payloads = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda unit, count: unit * count, st.binary(min_size=1, max_size=4), st.integers(0, 3 * SMALL_BLOCK)),
)
members = st.lists(st.tuples(names, payloads), min_size=1, max_size=5, unique_by=lambda m: m[0])

dtypes = st.one_of(
    hnp.scalar_dtypes(),
    hnp.byte_string_dtypes(min_len=1, max_len=4),
    hnp.unicode_string_dtypes(min_len=1, max_len=4),
    hnp.array_dtypes(max_size=3, allow_subarrays=True),  # any field names: some need NPY 3.0
)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def arrays(draw: Any) -> np.ndarray:
    """Arrays of any dtype but object, in C or Fortran order or a strided view."""
    array = draw(hnp.arrays(draw(dtypes), draw(shapes)))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return array[::2]
    return array


array_maps = st.dictionaries(st.text(alphabet="abcdefgh", min_size=1, max_size=6), arrays(), min_size=1, max_size=4)


class PipeSink:
    """A destination zipfile cannot seek: it writes data descriptors."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def value(self) -> bytes:
        return b"".join(self._parts)


def _zipfile_archive(
    entries: list[tuple[str, bytes]], methods: list[int], *, comment: bytes, streaming: bool, force_zip64: bool
) -> bytes:
    sink: Any = PipeSink() if streaming else io.BytesIO()
    with zipfile.ZipFile(sink, "w") as zf:
        zf.comment = comment
        for (name, data), method in zip(entries, methods):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.comment = name.encode()
            with zf.open(info, "w", force_zip64=force_zip64) as f:
                f.write(data)
    return sink.value() if streaming else sink.getvalue()


def _contents(reader: ZipReader) -> dict[str, bytes]:
    return {name: reader.read(name) for name in reader.members}


# ------------------------------------------------------- zipfile writes, we read


@PROPERTY
@given(
    entries=members,
    methods=st.lists(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]), min_size=5, max_size=5),
    comment=st.binary(max_size=300),
    streaming=st.booleans(),
    force_zip64=st.booleans(),
    trailing=st.sampled_from([0, 1, 511, 10239]),
)
def test_we_read_what_zipfile_writes(
    monkeypatch: pytest.MonkeyPatch,
    entries: list[tuple[str, bytes]],
    methods: list[int],
    comment: bytes,
    streaming: bool,
    force_zip64: bool,
    trailing: int,
) -> None:
    monkeypatch.setattr(zipread, "OUTPUT_BLOCK", SMALL_BLOCK)
    data = _zipfile_archive(entries, methods, comment=comment, streaming=streaming, force_zip64=force_zip64)
    reader = ZipReader(io.BytesIO(data + bytes(trailing)), source="zipfile.zip")
    assert list(reader.members) == [name for name, _ in entries]
    assert _contents(reader) == dict(entries)


@pytest.mark.slow
def test_we_read_zipfile_archives_past_the_member_count_limit() -> None:
    """65,536 members: the count only a ZIP64 end record holds."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for index in range(0x10000):
            zf.writestr(f"m{index}", b"")
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as check:
        assert len(check.infolist()) == 0x10000
    reader = ZipReader(io.BytesIO(buffer.getvalue()), source="many.zip")
    assert len(reader.members) == 0x10000 and reader.read("m65535") == b""


# ------------------------------------------------------- we write, zipfile reads


@PROPERTY
@given(
    entries=members,
    compression=st.sampled_from(["stored", "deflate"]),
    force_zip64=st.booleans(),
    align=st.sampled_from([1, 64]),
    split=st.integers(0, 100),
)
def test_zipfile_reads_what_we_write(
    entries: list[tuple[str, bytes]], compression: str, force_zip64: bool, align: int, split: int
) -> None:
    sink = PipeSink()
    writer = ZipWriter(sink, compression=compression, force_zip64=force_zip64)
    for name, data in entries:
        writer.add(name, [data[:split], data[split:]], size=len(data), align=align)
    writer.close()
    with zipfile.ZipFile(io.BytesIO(sink.value())) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [name for name, _ in entries]
        assert {name: zf.read(name) for name in zf.namelist()} == dict(entries)


@pytest.mark.slow
def test_zipfile_reads_our_archives_past_the_member_count_limit() -> None:
    sink = PipeSink()
    writer = ZipWriter(sink)
    for index in range(0x10000):
        writer.add(f"m{index}", [b"x"], size=1)
    writer.close()
    with zipfile.ZipFile(io.BytesIO(sink.value())) as zf:
        assert len(zf.infolist()) == 0x10000 and zf.read("m65535") == b"x"


@PROPERTY
@given(state=array_maps, compression=st.sampled_from(["stored", "deflate"]))
def test_numpy_load_and_our_load_read_the_arrays_we_dump(state: dict[str, np.ndarray], compression: str) -> None:
    buffer = io.BytesIO()
    dump(state, buffer, compression=compression)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        assert zf.testzip() is None
    with np.load(io.BytesIO(buffer.getvalue())) as npz:
        for name, array in state.items():
            assert_array_exact(npz[name], array, name)
    loaded = load(io.BytesIO(buffer.getvalue()))
    for name, array in state.items():
        assert_array_exact(loaded[name], array, name)


# -------------------------------------------------------- numpy writes, we read


def _npy_bytes(array: np.ndarray, version: tuple[int, int] | None) -> bytes | None:
    """``array`` as ``numpy.lib.format.write_array`` writes it (None: that
    version cannot hold its header, for example non-latin-1 field names in 1.0)."""
    out = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "format 3.0 needs numpy >= 1.17"
            np.lib.format.write_array(out, array, version=version, allow_pickle=False)
    except ValueError:
        return None
    return out.getvalue()


@PROPERTY
@given(
    state=array_maps,
    version=st.sampled_from([(1, 0), (2, 0), (3, 0), None]),
    method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_we_read_npy_members_numpy_writes(
    monkeypatch: pytest.MonkeyPatch,
    state: dict[str, np.ndarray],
    version: tuple[int, int] | None,
    method: int,
) -> None:
    monkeypatch.setattr(zipread, "OUTPUT_BLOCK", SMALL_BLOCK)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        written = {name: _npy_bytes(array, version) for name, array in state.items()}
        for name, data in written.items():
            if data is not None:
                zf.writestr(name, data)
    arrays = read_arrays(io.BytesIO(buffer.getvalue()))
    assert list(arrays) == [name for name, data in written.items() if data is not None]
    for name, array in arrays.items():
        assert_array_exact(array, state[name], name)


@PROPERTY
@given(state=array_maps, compressed=st.booleans())
def test_we_read_what_np_savez_writes(state: dict[str, np.ndarray], compressed: bool) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (np.savez_compressed if compressed else np.savez)(buffer, **state)
    arrays = read_arrays(io.BytesIO(buffer.getvalue()))
    assert list(arrays) == [f"{name}.npy" for name in state]
    for name, array in state.items():
        assert_array_exact(arrays[f"{name}.npy"], array, name)


# ---------------------------------------- verify and load judge NPY headers alike

huge = st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64])
header_descrs = st.sampled_from(
    ["|V0", "|u1", "<f8", ">i2", "|V16", "|S0", "<U0", "|S3", "<M8[s]", [("a", "<i4"), ("b", "|V0")],
     [("z", "|V0")], ("<f8", (2,))]
)


@st.composite
def npy_members(draw: Any) -> tuple[bytes, dict[str, Any]]:
    """An NPY member whose header may be anything numpy's writer could format."""
    shape = tuple(draw(st.lists(st.one_of(st.integers(0, 3), huge), max_size=3)))
    shape += (1,) * draw(st.sampled_from([0, 0, 0, npy.MAX_DIMS - 1, npy.MAX_DIMS + 1]))
    header = {"descr": draw(header_descrs), "fortran_order": draw(st.booleans()), "shape": shape}
    out = io.BytesIO()
    np.lib.format.write_array_header_2_0(out, header)
    try:
        declared = int(np.prod(shape, dtype=object)) * np.lib.format.descr_to_dtype(header["descr"]).itemsize
    except (TypeError, ValueError):
        declared = 0
    size = declared if declared <= 4096 else 64
    size = max(0, size + draw(st.sampled_from([0, 0, 0, -1, 1])))
    return out.getvalue() + bytes(size), header


def _raises_archive_error(call: Any) -> bool:
    try:
        call()
    except ArchiveError:
        return True
    return False


@PROPERTY
@given(case=npy_members())
def test_verify_reports_a_problem_exactly_when_load_refuses(tmp_path: Path, case: tuple[bytes, dict[str, Any]]) -> None:
    member, header = case
    path = tmp_path / "case.zip"
    pkl = pickle_with_ids({"W": Ref("ndarray.W")}, ref_ids)
    path.write_bytes(build_zip([RawMember("W", member), RawMember("pkl", pkl)]))
    reported = bool(verify(path))
    for call in (lambda: load(path), lambda: load(path, mmap=True), lambda: read_arrays(path)):
        assert _raises_archive_error(call) == reported, (header, verify(path))
    if not reported:
        loaded = load(path)["W"]
        assert loaded.shape == header["shape"]


# --------------------------------------------------------------- Debian tools

PACKAGES = {"zip": "zip", "unzip": "unzip", "7z": "p7zip-full", "bsdtar": "libarchive-tools"}


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: the differential tests need `apt-get install -y {PACKAGES[tool]}`")


def _tool(tool: str, command: str, cwd: Path) -> str:
    """Run ``command`` (a shell line) that uses ``tool``; fail clearly if it is missing."""
    _require(tool)
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def _tool_arrays() -> dict[str, np.ndarray]:
    return {
        "matrix": np.arange(1000, dtype="<f8").reshape(10, 100),
        "fortran": np.asfortranarray(np.arange(12, dtype=">i2").reshape(3, 4)),
        "records": np.array([(1, b"ab"), (2, b"c")], dtype=[("n", "<u4"), ("s", "|S2")]),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3)),
        "edge": np.zeros(3 * SMALL_BLOCK + 5, dtype="u1"),  # 5 bytes past 3 (shrunk) output blocks
    }


TOOL_WRITERS = {
    "zip": ("zip", "zip -q out.zip *.npy"),
    "zip stored": ("zip", "zip -q -0 out.zip *.npy"),
    "zip zip64": ("zip", "zip -q -fz out.zip *.npy"),
    "zip to a pipe": ("zip", "zip -q - *.npy | cat > out.zip"),
    "7z": ("7z", "7z a -tzip -mx=5 out.zip *.npy"),
    "7z stored": ("7z", "7z a -tzip -mx=0 out.zip *.npy"),
    "bsdtar to a pipe": ("bsdtar", "bsdtar -cf - --format zip *.npy | cat > out.zip"),
    "bsdtar stored": ("bsdtar", "bsdtar -cf out.zip --format zip --options zip:compression=store *.npy"),
}


@pytest.mark.parametrize("writer", list(TOOL_WRITERS))
def test_we_read_what_zip_tools_write(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, writer: str) -> None:
    monkeypatch.setattr(zipread, "OUTPUT_BLOCK", SMALL_BLOCK)
    state = _tool_arrays()
    for name, array in state.items():
        np.save(tmp_path / f"{name}.npy", array)
    tool, command = TOOL_WRITERS[writer]
    _tool(tool, command, tmp_path)
    arrays = read_arrays(tmp_path / "out.zip")
    assert sorted(arrays) == sorted(f"{name}.npy" for name in state)
    for name, array in state.items():
        assert_array_exact(arrays[f"{name}.npy"], array, name)


TOOL_READERS = {
    "unzip": ("unzip", "unzip -t a.ckpt"),
    "7z": ("7z", "7z t -bb1 a.ckpt"),
    "bsdtar": ("bsdtar", "bsdtar -tf a.ckpt"),
}


@pytest.mark.parametrize("compression", ["stored", "deflate"])
@pytest.mark.parametrize("reader", list(TOOL_READERS))
def test_zip_tools_test_our_archives_clean(tmp_path: Path, reader: str, compression: str) -> None:
    dump(_tool_arrays(), tmp_path / "a.ckpt", compression=compression)
    tool, command = TOOL_READERS[reader]
    listing = _tool(tool, command, tmp_path)
    with zipfile.ZipFile(tmp_path / "a.ckpt") as zf:
        assert all(name in listing for name in zf.namelist())


@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_bsdtar_extracts_our_members_byte_for_byte(tmp_path: Path, compression: str) -> None:
    _require("bsdtar")
    dump(_tool_arrays(), tmp_path / "a.ckpt", compression=compression)
    with zipfile.ZipFile(tmp_path / "a.ckpt") as zf:
        for name in ("matrix", "pkl", "manifest.json"):
            extracted = subprocess.run(["bsdtar", "-xOf", "a.ckpt", name], cwd=tmp_path, capture_output=True)
            assert extracted.returncode == 0 and extracted.stdout == zf.read(name), name
