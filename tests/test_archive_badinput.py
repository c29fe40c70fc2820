"""Malformed archives: each raises an ``ArchiveError`` subclass whose message
names the archive and the problem; nothing else escapes, nothing huge is
allocated, nothing in a refused member is constructed."""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .helpers_archive import (
    TRUSTED,
    Layer,
    RawMember,
    Ref,
    assert_names_archive,
    assert_same,
    build_zip,
    npy_bytes,
    npy_header,
    pickle_with_ids,
    deflate,
    deflate_then_zeros,
    ref_ids,
)
from luigi_checkpoint.storage import cli
from luigi_checkpoint.storage.archive import audit, dump, load, read_arrays, read_manifest, verify
from luigi_checkpoint.storage.errors import (
    ArchiveError,
    BadNpyHeaderError,
    BadPersistentIdError,
    ChecksumError,
    CorruptPickleError,
    MissingMemberError,
    NotAnArchiveError,
    UnloadableArchiveError,
    UntrustedTypeError,
)
from luigi_checkpoint.storage.fs import resolve, url_of

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MiB = 1 << 20

# ---------------------------------------------------------------------- helpers


def _small_state() -> dict[str, Any]:
    return {"model": Layer(W=np.arange(6, dtype="<f8").reshape(2, 3), b=np.zeros(3, ">i4")),
            "step": 3, "name": "aaaaaaaaaaaaaaaa", "lr": np.float32(0.5)}


def _theano_like(array_members: dict[str, bytes], obj: Any, *, deflate: bool = False) -> bytes:
    """An archive of NPY members plus a ``pkl`` with persistent ids (via :class:`Ref`)."""
    members = [RawMember(name, data, deflate=deflate) for name, data in array_members.items()]
    return build_zip([*members, RawMember("pkl", pickle_with_ids(obj, ref_ids), deflate=deflate)])


def _write(tmp_path: Any, data: bytes, name: str = "bad.ckpt") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _raises(kind: type[BaseException], call: Callable[[], Any], *names: str) -> ArchiveError:
    with pytest.raises(kind) as info:
        call()
    assert_names_archive(info.value, *names)
    return info.value


def _put(root: Any, url: str, data: bytes) -> None:
    location = resolve(url, root.storage_options)
    fs, path = location.fs, location.path
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def _spellings(url: str, storage_options: dict[str, Any] | None = None) -> tuple[str, ...]:
    location = resolve(url, storage_options)
    fs, path = location.fs, location.path
    return (url, url_of(fs, path))


class Hung(BaseException):
    """A reader did not return in time (a BaseException: no ``except Exception`` eats it)."""


@contextmanager
def _returns_within(seconds: float) -> Iterator[None]:
    """Turn a reader that loops forever into a test failure."""

    def fire(*_: Any) -> None:
        raise Hung(f"did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _peak_memory_below(limit: int) -> Iterator[None]:
    """Fail if Python/numpy allocations peak above ``limit`` bytes inside the block."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak allocation {peak} bytes"


READERS: dict[str, Callable[[str], Any]] = {
    "load": lambda p: load(p, trusted=TRUSTED),
    "read_manifest": read_manifest,
    "read_arrays": read_arrays,
    "audit": lambda p: audit(p, trusted=TRUSTED),
}

# ------------------------------------------------------------- not a ZIP at all

NOT_ZIPS = {
    "text": b"this is not a zip archive\n" * 20,
    "npy": npy_bytes(np.arange(50)),
    "pickle": pickle.dumps({"a": 1}),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(200),
    "zeros": bytes(4096),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("content", list(NOT_ZIPS))
def test_not_a_zip_is_refused_by_every_reader(tmp_path: Any, content: str, reader: str) -> None:
    path = _write(tmp_path, NOT_ZIPS[content])
    _raises(NotAnArchiveError, lambda: READERS[reader](path), path)


@pytest.mark.parametrize("reader", list(READERS))
def test_an_empty_file_is_refused(tmp_path: Any, reader: str) -> None:
    path = _write(tmp_path, b"")
    _raises(ArchiveError, lambda: READERS[reader](path), path)


def test_not_a_zip_on_any_storage_names_its_url(root: Any) -> None:
    url = root.join("junk.ckpt")
    _put(root, url, NOT_ZIPS["text"])
    names = _spellings(url, root.storage_options)
    _raises(NotAnArchiveError, lambda: load(url, storage_options=root.storage_options), *names)
    _raises(NotAnArchiveError, lambda: read_manifest(url, storage_options=root.storage_options),
            *names)


def test_verify_reports_a_file_that_is_not_an_archive(tmp_path: Any) -> None:
    path = _write(tmp_path, NOT_ZIPS["text"])
    try:
        problems = verify(path)
    except ArchiveError as exc:
        assert_names_archive(exc, path)
    else:
        assert problems and all(isinstance(p, str) for p in problems)


# ------------------------------------------------------------------- truncation


def test_truncated_at_every_byte_is_refused(tmp_path: Any) -> None:
    good = io.BytesIO()
    dump({"W": np.arange(3, dtype="<i2"), "n": 1}, good)
    data = good.getvalue()
    path = str(tmp_path / "cut.ckpt")
    for n in range(len(data)):
        with open(path, "wb") as f:
            f.write(data[:n])
        _raises(ArchiveError, lambda: load(path, trusted=TRUSTED), path)
        _raises(ArchiveError, lambda: read_manifest(path), path)


@pytest.fixture(scope="module")
def bigger_archive() -> bytes:
    state = {"layers": [Layer(W=np.full((64, 64), i, "<f4"), b=np.arange(64)) for i in range(8)],
             "text": ["entry"] * 200, "rng": np.random.default_rng(5)}
    out = io.BytesIO()
    dump(state, out)
    return out.getvalue()


@settings(max_examples=60, **SETTINGS)
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_bigger_archive_is_refused(
    tmp_path: Any, bigger_archive: bytes, cut: float
) -> None:
    path = _write(tmp_path, bigger_archive[: int(cut * len(bigger_archive))])
    _raises(ArchiveError, lambda: load(path, trusted=TRUSTED), path)
    _raises(ArchiveError, lambda: read_arrays(path), path)


def test_truncated_archive_on_any_storage_names_its_url(root: Any) -> None:
    good = io.BytesIO()
    dump(_small_state(), good)
    data = good.getvalue()
    url = root.join("cut.ckpt")
    names = _spellings(url, root.storage_options)
    for n in (1, len(data) // 2, len(data) - 22, len(data) - 1):
        _put(root, url, data[:n])
        _raises(ArchiveError, lambda: load(url, trusted=TRUSTED,
                                           storage_options=root.storage_options), *names)


# ------------------------------------------------------- members and their ids


def test_an_archive_without_pkl_is_refused(tmp_path: Any) -> None:
    path = _write(tmp_path, build_zip([RawMember("W", npy_bytes(np.arange(3)))]))
    exc = _raises(MissingMemberError, lambda: load(path), path)
    assert "pkl" in str(exc)
    _raises(MissingMemberError, lambda: audit(path), path)


def test_a_manifest_listing_a_missing_member_is_refused(tmp_path: Any) -> None:
    """The member ``model/b`` is renamed ``model/c`` in the ZIP headers only."""
    path, manifest, raw = _dumped(tmp_path)
    assert manifest["arrays"][1]["name"] == "model/b"
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        local = zf.getinfo("model/b").header_offset + 30
        central = raw.index(b"model/b", zf.start_dir)
    for at in (local, central):
        raw[at : at + 7] = b"model/c"
    _write(tmp_path, bytes(raw), "a.ckpt")
    for reader in (read_manifest, lambda p: load(p, trusted=TRUSTED)):
        exc = _raises(ArchiveError, lambda: reader(path), path)
        assert "model/b" in str(exc)


def test_a_persistent_id_naming_a_missing_member_is_refused(tmp_path: Any) -> None:
    data = _theano_like({"W": npy_bytes(np.arange(3))}, {"W": Ref("ndarray.W"),
                                                         "b": Ref("ndarray.nothere")})
    path = _write(tmp_path, data)
    exc = _raises(MissingMemberError, lambda: load(path), path)
    assert "nothere" in str(exc)


@pytest.mark.parametrize("pid", ["tensor.W", "W", "", ".W", "numpy.W", 42, ("ndarray", "W")])
def test_a_persistent_id_of_unknown_kind_is_refused(tmp_path: Any, pid: Any) -> None:
    data = _theano_like({"W": npy_bytes(np.arange(3))}, {"W": Ref(pid)})
    path = _write(tmp_path, data)
    _raises(BadPersistentIdError, lambda: load(path), path)


def test_a_persistent_id_pointing_at_the_pickle_itself_is_refused(tmp_path: Any) -> None:
    path = _write(tmp_path, _theano_like({}, {"W": Ref("ndarray.pkl")}))
    _raises(ArchiveError, lambda: load(path), path)


# --------------------------------------------------------------- NPY headers


def _npy_text(text: bytes) -> bytes:
    """An NPY 1.0 prefix whose header is ``text`` (padded to 64 bytes like numpy does)."""
    padded = text.ljust(-(-(len(text) + 11) // 64) * 64 - 11) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded


def _npy_case(tmp_path: Any, member: bytes) -> str:
    return _write(tmp_path, _theano_like({"W": member}, {"W": Ref("ndarray.W")}))


BAD_HEADERS = {
    "shape_too_big": npy_header("<f8", (2**40,)) + bytes(80),
    "shape_overflows": npy_header("<f8", (2**40, 2**40)) + bytes(80),
    "shape_too_small": npy_header("<f8", (5,)) + bytes(80),
    "negative_shape": npy_header("<f8", (-10,)) + bytes(80),
    "bad_magic": b"\x93NUMPZ" + npy_header("<f8", (10,))[6:] + bytes(80),
    "header_past_end": npy_header("<f8", (10,))[:8] + b"\xff\xff" + b"{'descr'",
    "not_a_dict": _npy_text(b"[1, 2, 3]") + bytes(80),
    "code_in_header": _npy_text(b"__import__('os').system('true')") + bytes(80),
    "unparsable": _npy_text(b"{'descr': '<f8', 'fortran_order': False, 'shape': (10,") + bytes(80),
    "shape_not_ints": _npy_text(b"{'descr': '<f8', 'fortran_order': False, 'shape': (2.5,)}")
    + bytes(80),
    "bad_descr": npy_header("<x9", (10,)) + bytes(80),
    "missing_key": npy_header("<f8", (10,)).replace(b"'fortran_order': False, ", b" " * 24)
    + bytes(80),
    "only_magic": b"\x93NUMPY",
    "empty_member": b"",
    # What numpy cannot build, though the sizes agree (verify passed these):
    "empty_items_beyond_intp": npy_header("|V0", (2**64,)),
    "empty_items_counting_past_intp": npy_header("|V0", (2**32, 2**32)),
    "a_zero_axis_beside_huge_ones": npy_header("|u1", (2**40, 0, 2**40)),
    "more_dimensions_than_numpy_has": npy_header("<f8", (1,) * 65) + bytes(8),
    "sub_array_dtype": _npy_text(b"{'descr': ('<f8', (2,)), 'fortran_order': False, 'shape': (5,)}")
    + bytes(80),
    "unsized_string_dtype": npy_header("|S0", (3,)),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_a_bad_npy_header_is_refused_before_allocating(tmp_path: Any, case: str) -> None:
    path = _npy_case(tmp_path, BAD_HEADERS[case])
    with _peak_memory_below(16 * MiB):
        _raises(BadNpyHeaderError, lambda: load(path), path)
        _raises(BadNpyHeaderError, lambda: load(path, mmap=True), path)
        _raises(BadNpyHeaderError, lambda: read_arrays(path), path)
    problems = verify(path)
    assert problems and any("W" in p for p in problems)


def test_a_header_claiming_80_mb_over_80_bytes_allocates_nothing_big(tmp_path: Any) -> None:
    path = _npy_case(tmp_path, npy_header("<f8", (10**7,)) + bytes(80))
    with _peak_memory_below(8 * MiB):
        _raises(BadNpyHeaderError, lambda: load(path), path)
        _raises(BadNpyHeaderError, lambda: read_arrays(path), path)


EFFECTS: list[str] = []


def _side_effect() -> str:
    EFFECTS.append("constructed")
    return "boom"


class Sneaky:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_side_effect, ())


def test_object_dtype_inside_an_npy_member_is_unpickled_only_when_unsafe(tmp_path: Any) -> None:
    member = npy_bytes(np.array([1, Sneaky()], dtype=object))
    path = _npy_case(tmp_path, member)
    for call in (lambda: load(path), lambda: load(path, trusted=[Sneaky]), lambda: read_arrays(path)):
        with pytest.raises(UnloadableArchiveError, match="member 'W' holds an object array.*unsafe=True") as info:
            call()
        assert_names_archive(info.value, path)
    assert verify(path) == []
    assert EFFECTS == []
    loaded = load(path, unsafe=True)["W"]
    assert loaded.dtype == object and loaded.tolist() == [1, "boom"]
    assert EFFECTS == ["constructed"]
    EFFECTS.clear()


def test_object_dtype_with_a_corrupt_pickle_is_damaged_not_unloadable(tmp_path: Any) -> None:
    """The bytes are judged (CRC) before anything may be unpickled."""
    member = npy_bytes(np.array([1, "some text"], dtype=object))
    archive = bytearray(_theano_like({"W": member}, {"W": Ref("ndarray.W")}))
    archive[archive.index(b"some text")] ^= 0x01
    path = _write(tmp_path, bytes(archive))
    for call in (lambda: load(path), lambda: load(path, unsafe=True), lambda: read_arrays(path)):
        _raises(ChecksumError, call, path)
    assert any("CRC-32" in p for p in verify(path))


def test_an_object_array_pickle_must_hold_what_its_header_declares(tmp_path: Any) -> None:
    header = npy_header("|O", (3,))
    member = header + pickle.dumps(np.array([1, 2], dtype=object))
    path = _npy_case(tmp_path, member)
    _raises(BadNpyHeaderError, lambda: load(path, unsafe=True), path)


# ------------------------------------------------------ what is not a file


def _not_regular(tmp_path: Any, kind: str) -> str:
    if kind == "FIFO":
        os.mkfifo(tmp_path / "fifo.ckpt")
        return str(tmp_path / "fifo.ckpt")
    if kind == "directory":
        (tmp_path / "dir.ckpt").mkdir()
        return str(tmp_path / "dir.ckpt")
    return "/dev/zero"


@pytest.mark.parametrize("kind", ["FIFO", "directory", "character device"])
def test_a_path_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Any, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _not_regular(tmp_path, kind)
    with _returns_within(5):
        for read in READERS.values():
            exc = _raises(NotAnArchiveError, lambda: read(path), path)
            assert f"not a regular file (a {kind})" in str(exc)
        assert verify(path) == [str(exc)]
        assert cli.main(["inspect", path]) != 0
    # ckpt says what to do with a folder (ckpt ls), and that a FIFO or device is no archive.
    said = f"{path} is a folder: ckpt inspect takes" if kind == "directory" else f"{path}: cannot be read as a ZIP archive"
    assert said in capsys.readouterr().err


def test_an_open_pipe_is_refused_at_once() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe, _returns_within(5):
        _raises(NotAnArchiveError, lambda: load(pipe), repr(pipe))
    os.close(write_end)


# ------------------------------------------------------------------ checksums


def _dumped(tmp_path: Any, **options: Any) -> tuple[str, dict[str, Any], bytearray]:
    path = str(tmp_path / "a.ckpt")
    manifest = dump(_small_state(), path, metadata={"note": "bbbbbbbbbbbb"}, **options)
    with open(path, "rb") as f:
        return path, manifest, bytearray(f.read())


def test_a_flipped_array_byte_fails_the_crc(tmp_path: Any) -> None:
    path, manifest, raw = _dumped(tmp_path)
    entry = manifest["arrays"][0]
    raw[entry["offset"] + 9] ^= 0x40
    _write(tmp_path, bytes(raw), "a.ckpt")
    exc = _raises(ChecksumError, lambda: load(path, trusted=TRUSTED), path)
    assert entry["name"] in str(exc)
    _raises(ChecksumError, lambda: read_arrays(path), path)
    problems = verify(path)
    assert len(problems) == 1 and entry["name"] in problems[0], problems
    read_manifest(path)  # the cheap check reads only the directory and manifest


def test_a_flipped_pickle_byte_fails_the_crc(tmp_path: Any) -> None:
    path, _, raw = _dumped(tmp_path)
    at = raw.index(b"aaaaaaaaaaaaaaaa")
    raw[at + 3] = ord("c")  # still a valid pickle, of another string
    _write(tmp_path, bytes(raw), "a.ckpt")
    exc = _raises(ChecksumError, lambda: load(path, trusted=TRUSTED), path)
    assert "pkl" in str(exc)
    assert any("pkl" in p for p in verify(path))


def test_a_flipped_manifest_byte_fails_the_crc(tmp_path: Any) -> None:
    path, _, raw = _dumped(tmp_path)
    at = raw.index(b"bbbbbbbbbbbb")
    raw[at + 3] = ord("c")
    _write(tmp_path, bytes(raw), "a.ckpt")
    exc = _raises(ChecksumError, lambda: read_manifest(path), path)
    assert "manifest.json" in str(exc)
    assert any("manifest.json" in p for p in verify(path))


def test_a_flipped_byte_in_a_deflated_member_is_refused(tmp_path: Any) -> None:
    path, manifest, raw = _dumped(tmp_path, compression="deflate")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(manifest["arrays"][0]["name"])
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + 2] ^= 0x10
    _write(tmp_path, bytes(raw), "a.ckpt")
    _raises(ArchiveError, lambda: load(path, trusted=TRUSTED), path)
    assert verify(path)


def test_crc_mismatch_on_any_storage_names_its_url(root: Any) -> None:
    url = root.join("a.ckpt")
    manifest = dump(_small_state(), url, storage_options=root.storage_options)
    fs = root.fs()
    raw = bytearray(fs.cat_file(resolve(url, root.storage_options).path))
    raw[manifest["arrays"][1]["offset"]] ^= 0x01
    _put(root, url, bytes(raw))
    names = _spellings(url, root.storage_options)
    _raises(ChecksumError, lambda: load(url, trusted=TRUSTED,
                                        storage_options=root.storage_options), *names)
    assert verify(url, storage_options=root.storage_options)


# ------------------------------------------------------------------- zip bombs


@pytest.mark.parametrize("declared", [0xFFFFFFF0, 2**50])
@pytest.mark.parametrize("member", ["W", "pkl"])
def test_a_member_declaring_a_gigantic_size_is_refused(
    tmp_path: Any, declared: int, member: str
) -> None:
    W = npy_bytes(np.arange(10.0))
    pkl = pickle_with_ids({"W": Ref("ndarray.W")}, ref_ids)
    members = [RawMember("W", W, deflate=True, declared_size=declared if member == "W" else None),
               RawMember("pkl", pkl, deflate=True,
                         declared_size=declared if member == "pkl" else None)]
    path = _write(tmp_path, build_zip(members))
    with _peak_memory_below(16 * MiB):
        _raises(ArchiveError, lambda: load(path), path)
        assert verify(path)


@pytest.mark.parametrize("member", ["W", "pkl"])
def test_a_deflate_stream_inflating_far_past_its_declared_size_is_refused(
    tmp_path: Any, member: str
) -> None:
    W = npy_bytes(np.arange(10.0))
    pkl = pickle_with_ids({"W": Ref("ndarray.W")}, ref_ids)
    members = [RawMember(name, data, deflate=True,
                         payload=deflate_then_zeros(data, 64) if name == member else None)
               for name, data in {"W": W, "pkl": pkl}.items()]
    path = _write(tmp_path, build_zip(members))
    with _peak_memory_below(16 * MiB):
        _raises(ArchiveError, lambda: load(path), path)
        problems = verify(path)
    assert any(member in p for p in problems), problems


@pytest.mark.parametrize("trailing", [b"x", b"junk", bytes(18)])
@pytest.mark.parametrize("member", ["W", "pkl"])
def test_a_deflate_stream_ending_before_its_declared_size_is_refused(
    tmp_path: Any, member: str, trailing: bytes
) -> None:
    honest = {"W": npy_bytes(np.arange(10.0)),
              "pkl": pickle_with_ids({"W": Ref("ndarray.W"), "n": list(range(30))}, ref_ids)}
    members = [RawMember(name, data, deflate=True,
                         payload=deflate(data[:100]) + trailing if name == member else None)
               for name, data in honest.items()]
    path = _write(tmp_path, build_zip(members))
    with _returns_within(2):
        _raises(ArchiveError, lambda: load(path), path)
        assert any(member in p for p in verify(path))
        if member == "W":
            _raises(ArchiveError, lambda: read_arrays(path), path)


# -------------------------------------------------------------------- pickles

GOOD_PICKLE = pickle_with_ids({"W": Ref("ndarray.W"), "n": list(range(20))}, ref_ids)
BAD_PICKLES = {
    "garbage": b"\x80\x05garbage and more garbage",
    "truncated": GOOD_PICKLE[: len(GOOD_PICKLE) // 2],
    "no_stop": GOOD_PICKLE[:-1],
    "empty": b"",
    "bad_opcode": b"\x80\x04\xff\xfe.",
    "stack_underflow": b"\x80\x04s.",
    "protocol_99": b"\x80\x63N.",
}


def _bad_pickle(tmp_path: Any, case: str) -> str:
    data = build_zip([RawMember("W", npy_bytes(np.arange(3))), RawMember("pkl", BAD_PICKLES[case])])
    return _write(tmp_path, data)


@pytest.mark.parametrize("case", list(BAD_PICKLES))
def test_a_malformed_pickle_is_refused_by_load(tmp_path: Any, case: str) -> None:
    path = _bad_pickle(tmp_path, case)
    _raises(CorruptPickleError, lambda: load(path), path)
    _raises(CorruptPickleError, lambda: load(path, unsafe=True), path)


@pytest.mark.parametrize("case", list(BAD_PICKLES))
def test_a_malformed_pickle_is_refused_by_audit(tmp_path: Any, case: str) -> None:
    path = _bad_pickle(tmp_path, case)
    _raises(CorruptPickleError, lambda: audit(path), path)


# ------------------------------------------------------------------ bit flips


def _reference_archive(compression: str) -> tuple[Any, bytes]:
    state = {**_small_state(), "shared": [np.arange(4, dtype="u2")] * 2, "rng":
             np.random.default_rng(1)}
    out = io.BytesIO()
    dump(state, out, compression=compression, metadata={"k": [1, 2]})
    return state, out.getvalue()


REFERENCE = {c: _reference_archive(c) for c in ("stored", "deflate")}


@settings(max_examples=100, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate])
@given(data=st.data(), compression=st.sampled_from(["stored", "deflate"]))
def test_any_single_byte_change_loads_equal_or_is_refused(data: Any, compression: str) -> None:
    state, archive = REFERENCE[compression]
    at = data.draw(st.integers(0, len(archive) - 1), label="position")
    xor = data.draw(st.integers(1, 255), label="xor")
    mutated = bytearray(archive)
    mutated[at] ^= xor
    with _returns_within(3):
        try:
            loaded = load(io.BytesIO(bytes(mutated)), trusted=TRUSTED)
        except (ArchiveError, UntrustedTypeError):
            pass
        else:
            assert_same(loaded, state)
        try:
            problems = verify(io.BytesIO(bytes(mutated)))
        except ArchiveError:
            pass
        else:
            assert isinstance(problems, list)
