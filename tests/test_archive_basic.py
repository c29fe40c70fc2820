"""The archive API beyond round trips: cheap manifest reads, verify, audit,
freeze/write_frozen, mmap layout and CRC-32 of large (threaded) members."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage import _zipread as zipread
from luigi_checkpoint.storage import archive
from luigi_checkpoint.storage.errors import (
    ArchiveError,
    ChecksumError,
    MissingMemberError,
    UnloadableArchiveError,
)
from luigi_checkpoint.storage._zipread import ZipReader
from luigi_checkpoint.storage._zipwrite import ZipWriter


def _state() -> dict[str, Any]:
    return {
        "model": {"W": np.arange(12, dtype="<f4").reshape(3, 4), "b": np.ones(4, ">f8")},
        "big": np.arange(1 << 19, dtype="<f8"),  # 4 MiB: CRC on the helper thread
        "strided": np.arange(1 << 20, dtype="<i4")[::2],  # copied in chunks
        "fortran": np.asfortranarray(np.arange(6, dtype="<u2").reshape(2, 3)),
        "step": 12,
    }


@pytest.fixture
def path(tmp_path: Any) -> str:
    target = str(tmp_path / "state.ckpt")
    archive.dump(_state(), target, metadata={"run": "r1"})
    return target


def _rewrite(src: str, dest: str, replace: dict[str, bytes]) -> None:
    """Copy an archive member by member, replacing (or adding) some members."""
    with open(src, "rb") as f, open(dest, "wb") as out:
        reader = ZipReader(f, source=src)
        writer = ZipWriter(out)
        contents = {name: reader.read(name) for name in reader.members} | replace
        for name, data in contents.items():
            writer.add(name, [data], size=len(data), align=64)
        writer.close()


def test_large_and_strided_members_carry_correct_crcs(path: str) -> None:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    assert archive.verify(path) == []


def test_read_manifest_touches_neither_arrays_nor_pickle(path: str) -> None:
    manifest = archive.read_manifest(path)
    big = next(a for a in manifest["arrays"] if a["name"] == "big")
    with open(path, "r+b") as f:
        f.seek(big["offset"] + 1000)
        f.write(b"garbage!")
    assert archive.read_manifest(path) == manifest
    with pytest.raises(ChecksumError, match="member 'big'"):
        archive.load(path)
    (problem,) = archive.verify(path)
    assert path in problem and "CRC-32 mismatch" in problem


def test_manifest_records_fields_and_metadata(path: str) -> None:
    manifest = archive.read_manifest(path)
    assert manifest["format"] == archive.FORMAT and manifest["metadata"] == {"run": "r1"}
    assert manifest["compression"] == "stored" and manifest["created"].endswith("+00:00")
    entries = {a["name"]: a for a in manifest["arrays"]}
    assert entries["fortran"] == {
        "name": "fortran", "dtype": "<u2", "shape": [2, 3], "nbytes": 12,
        "offset": entries["fortran"]["offset"],
    }


def test_read_manifest_refuses_members_the_manifest_does_not_list(path: str, tmp_path: Any) -> None:
    bad = str(tmp_path / "extra.ckpt")
    _rewrite(path, bad, {"intruder": b"x"})
    with pytest.raises(ArchiveError, match="unlisted \\['intruder'\\]"):
        archive.read_manifest(bad)


def test_read_manifest_refuses_a_newer_format_version(path: str, tmp_path: Any) -> None:
    manifest = archive.read_manifest(path) | {"format_version": archive.FORMAT_VERSION + 1}
    newer = str(tmp_path / "newer.ckpt")
    _rewrite(path, newer, {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(UnloadableArchiveError, match="newer than this reader"):
        archive.read_manifest(newer)


def test_an_archive_without_manifest_still_loads(path: str, tmp_path: Any) -> None:
    bare = str(tmp_path / "bare.ckpt")
    with open(path, "rb") as f, open(bare, "wb") as out:
        reader = ZipReader(f, source=path)
        writer = ZipWriter(out)
        for name in reader.members:
            if name != "manifest.json":
                data = reader.read(name)
                writer.add(name, [data], size=len(data))
        writer.close()
    assert np.array_equal(archive.load(bare)["big"], _state()["big"])
    assert set(archive.read_arrays(bare)) == {"model/W", "model/b", "big", "strided", "fortran"}
    with pytest.raises(MissingMemberError, match="manifest.json"):
        archive.read_manifest(bare)


def test_verify_reports_a_persistent_id_without_its_member(path: str, tmp_path: Any) -> None:
    broken = str(tmp_path / "broken.ckpt")
    with open(path, "rb") as f:
        pkl = ZipReader(f, source=path).read("pkl")
    _rewrite(path, broken, {"pkl": pkl.replace(b"ndarray.big", b"ndarray.bog")})
    problems = archive.verify(broken)
    assert any("'ndarray.bog' names a missing member 'bog'" in p for p in problems)


def test_read_arrays_by_name_and_missing_names(path: str) -> None:
    arrays = archive.read_arrays(path, ["model/b", "fortran"])
    assert list(arrays) == ["model/b", "fortran"]
    assert arrays["model/b"].dtype == np.dtype(">f8") and arrays["fortran"].flags.f_contiguous
    with pytest.raises(MissingMemberError, match="no member 'nope'"):
        archive.read_arrays(path, ["nope"])


class Untrusted:
    def __init__(self) -> None:
        self.W = np.zeros(2)


def test_audit_lists_globals_without_building_anything(tmp_path: Any) -> None:
    target = str(tmp_path / "u.ckpt")
    archive.dump({"m": Untrusted()}, target)
    report = archive.audit(target)
    assert report.untrusted == (f"{__name__}.Untrusted",)
    assert archive.audit(target, trusted=[Untrusted]).untrusted == ()


def test_freeze_without_copy_shares_and_with_copy_isolates() -> None:
    state = {"W": np.zeros(4)}
    shared, copied = archive.freeze(state, copy=False), archive.freeze(state, copy=True)
    state["W"][:] = 7
    for frozen, expected in ((shared, 7), (copied, 0)):
        out = io.BytesIO()
        manifest = archive.write_frozen(frozen, out, compression="deflate")
        assert manifest["compression"] == "deflate" and manifest["arrays"][0]["offset"] is None
        out.seek(0)
        assert np.array_equal(archive.load(out)["W"], np.full(4, expected, dtype=float))


def test_mmap_maps_aligned_read_only_arrays_in_their_layout(path: str) -> None:
    loaded = archive.load(path, mmap=True)
    for name in ("big", "fortran"):
        array = loaded[name]
        assert not array.flags.writeable and array.ctypes.data % 64 == 0
        assert np.array_equal(array, _state()[name])
    assert loaded["fortran"].flags.f_contiguous
    offset = next(a["offset"] for a in archive.read_manifest(path)["arrays"] if a["name"] == "big")
    with open(path, "r+b") as f:  # the map is the file itself: no copy was made
        f.seek(offset)
        f.write(np.float64(-1.5).tobytes())
    assert loaded["big"][0] == -1.5


def test_dump_refuses_unknown_compression_and_unserializable_metadata(tmp_path: Any) -> None:
    target = tmp_path / "x.ckpt"
    with pytest.raises(ValueError, match="compression"):
        archive.dump({}, str(target), compression="zstd")
    with pytest.raises(TypeError):
        archive.dump({}, str(target), metadata={"f": object()})
    assert not list(tmp_path.iterdir())


class NullSink:
    """Counts bytes written and keeps none (a sequential, unseekable destination)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)


def test_saving_a_strided_view_copies_it_in_bounded_chunks_only() -> None:
    base = np.ones(16 << 20, dtype="<f8")  # 128 MiB, the saved view holds half of it
    sink = NullSink()
    tracemalloc.start()
    try:
        archive.dump({"view": base[::2]}, sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.size > 64 << 20
    assert peak < 40 << 20


def test_many_small_arrays_load_equal_writable_aligned_and_apart(tmp_path: Any, monkeypatch: Any) -> None:
    """Small arrays are read many at a time into memory they share: each is
    still its own writable, 64-byte aligned array, and writing one leaves the
    others and a second load alone (in runs of 64 KiB: many runs, each in
    memory of its own)."""
    monkeypatch.setattr(zipread, "RUN", 64 << 10)
    rng = np.random.default_rng(11)
    dtypes = ["<f4", "<f8", "<i2", "|u1", "<c16", "|b1"]
    state = {
        f"w{i}": rng.integers(0, 100, size=(i % 7, 200)).astype(dtypes[i % len(dtypes)]) for i in range(300)
    }
    state["fortran"] = np.asfortranarray(rng.standard_normal((30, 20)))
    path = tmp_path / "many.zip"
    archive.dump(state, path)
    loaded = archive.load(path)
    for name, array in state.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype and loaded[name].flags.writeable
        assert loaded[name].ctypes.data % 64 == 0 or loaded[name].size == 0
    assert loaded["fortran"].flags.f_contiguous
    before = {name: array.copy() for name, array in loaded.items()}
    loaded["w8"][...] = 0
    for name, array in loaded.items():
        if name != "w8":
            np.testing.assert_array_equal(array, before[name])
    np.testing.assert_array_equal(archive.load(path)["w8"], state["w8"])
