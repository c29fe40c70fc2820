"""Round trips of ``luigi_checkpoint.storage.archive``: what goes in comes out exactly.

Property tests over random nested states on every storage kind, then the
format's promises one by one: member names and order, aligned data offsets,
DEFLATE, what stays inside the pickle, memory maps, open files.
"""

from __future__ import annotations

import io
import json
import os
import re
import string
import threading
import uuid
import zipfile
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .helpers_archive import (
    TRUSTED,
    Frozen,
    Layer,
    Plain,
    Slotted,
    Tagged,
    WithSlots,
    WithState,
    assert_array_exact,
    assert_same,
    laid_out,
)
from luigi_checkpoint.storage.errors import ChecksumError
from luigi_checkpoint.storage.archive import Frozen as ArchiveFrozen
from luigi_checkpoint.storage.archive import dump, freeze, load, read_arrays, read_manifest, write_frozen

EXAMPLES = {"local": 60, "file": 25, "memory": 40, "s3": 15}
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------ strategies

DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64, 128)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128, 256)),
    hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(endianness="?", max_len=4),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


ARRAYS = st.builds(
    laid_out,
    hnp.arrays(DTYPES, SHAPES),
    st.sampled_from(["c", "fortran", "transpose", "step", "reversed"]),
)
NUMPY_SCALARS = hnp.arrays(DTYPES, ()).map(lambda a: a[()])
PY_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.complex_numbers(),
    st.text(max_size=5), st.binary(max_size=5),
)

BIT_GENERATORS = [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64]


def make_rng(kind: str, seed: int, draws: int) -> Any:
    """An RNG advanced by ``draws`` mixed draws (buffered uint32 / gauss included)."""
    if kind == "RandomState":
        rng = np.random.RandomState(seed)
        rng.random_sample(draws)
        rng.standard_normal(draws % 2 + 1)
        return rng
    rng = np.random.Generator(getattr(np.random, kind)(seed))
    rng.random(draws)
    rng.integers(0, 2**32, size=draws % 3 + 1, dtype=np.uint32)
    return rng


RNG_KINDS = ["PCG64", "MT19937", "Philox", "SFC64", "RandomState"]
RNGS = st.builds(make_rng, st.sampled_from(RNG_KINDS), st.integers(0, 2**32 - 1),
                 st.integers(0, 5))
KEYS = st.one_of(
    st.text(alphabet=string.ascii_letters[:6] + "._/-0", min_size=1, max_size=5),
    st.sampled_from(["pkl", "manifest.json", "array_0", "x", "x_2"]),
    st.integers(-3, 3),
)
LEAVES = st.one_of(ARRAYS, ARRAYS, NUMPY_SCALARS, PY_SCALARS, RNGS)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(KEYS, children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.builds(Layer, children, children),
        st.builds(Plain, children, children),
        st.builds(Frozen, children),
        st.builds(Slotted, children),
        st.builds(WithSlots, children),
        st.builds(WithState, children),
    )


STATES = st.recursive(LEAVES, _containers, max_leaves=8)


def _with_sharing(shared: np.ndarray, state: Any) -> dict[str, Any]:
    return {"a": shared, "rest": state, "b": shared, "nested": [(shared,), Plain(shared)]}


SHARED_STATES = st.builds(_with_sharing, ARRAYS, STATES)


def _path(root: Any) -> str:
    return root.join(f"{uuid.uuid4().hex}.ckpt")


def _round_trip(state: Any, root: Any, **dump_options: Any) -> Any:
    path = _path(root)
    dump(state, path, storage_options=root.storage_options, **dump_options)
    return load(path, trusted=TRUSTED, storage_options=root.storage_options)


# -------------------------------------------------------------- property tests


def test_random_states_round_trip_exactly(root: Any) -> None:
    @settings(max_examples=EXAMPLES[root.kind], **SETTINGS)
    @given(state=STATES)
    def check(state: Any) -> None:
        assert_same(_round_trip(state, root), state)

    check()


def test_shared_arrays_stay_shared(root: Any) -> None:
    @settings(max_examples=max(5, EXAMPLES[root.kind] // 3), **SETTINGS)
    @given(state=SHARED_STATES)
    def check(state: dict[str, Any]) -> None:
        path = _path(root)
        manifest = dump(state, path, storage_options=root.storage_options)
        loaded = load(path, trusted=TRUSTED, storage_options=root.storage_options)
        assert_same(loaded, state)
        assert loaded["a"] is loaded["b"] is loaded["nested"][0][0] is loaded["nested"][1].value
        unshared = io.BytesIO()
        alone = dump({"a": state["a"], "rest": state["rest"]}, unshared)
        assert len(manifest["arrays"]) == len(alone["arrays"])

    check()


@settings(max_examples=30, **SETTINGS)
@given(state=STATES)
def test_random_states_round_trip_through_deflate(tmp_path: Any, state: Any) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.ckpt"
    manifest = dump(state, path, compression="deflate")
    assert manifest["compression"] == "deflate"
    assert_same(load(path, trusted=TRUSTED), state)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}


# ------------------------------------------------------------------------ RNGs


@pytest.mark.parametrize("kind", RNG_KINDS)
def test_restored_rng_continues_the_same_stream(root: Any, kind: str) -> None:
    rng = make_rng(kind, seed=1234, draws=3)
    loaded = _round_trip({"rng": rng}, root)["rng"]
    assert type(loaded) is type(rng)
    if kind == "RandomState":
        draws = [lambda r: r.random_sample(7), lambda r: r.standard_normal(3),
                 lambda r: r.randint(0, 2**31, size=5)]
    else:
        assert type(loaded.bit_generator) is type(rng.bit_generator)
        draws = [lambda r: r.random(7), lambda r: r.integers(0, 2**32, size=3, dtype=np.uint32),
                 lambda r: r.standard_normal(3)]
    for draw in draws:
        assert_array_exact(draw(loaded), draw(rng))


# ---------------------------------------------------------------- member names


def _members(path: Any) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def test_members_are_named_by_where_the_array_sits(tmp_path: Any) -> None:
    state = {
        "model": {"W": np.ones((2, 3)), "b": np.zeros(3)},
        "optimizer": {"velocity": [np.full(2, 1.5), np.full(3, 2.5)], "lr": 0.1},
        "layer": Layer(W=np.arange(4), b=np.arange(2)),
        "plain": Plain(np.arange(3)),
        "slots": WithSlots(np.arange(5)),
        "state": WithState(np.arange(6)),
        "pair": (np.arange(7), np.arange(8)),
    }
    manifest = dump(state, tmp_path / "a.ckpt")
    names = [a["name"] for a in manifest["arrays"]]
    assert names == [
        "model/W", "model/b", "optimizer/velocity/0", "optimizer/velocity/1",
        "layer/W", "layer/b", "plain/value", "slots/value", "state/value", "pair/0", "pair/1",
    ]
    assert _members(tmp_path / "a.ckpt") == [*names, "pkl", "manifest.json"]
    assert_same(load(tmp_path / "a.ckpt", trusted=TRUSTED), state)


def test_arrays_the_walk_does_not_reach_are_numbered(tmp_path: Any) -> None:
    state = {"by_pair": {(0, 1): np.arange(3), (1, 2): np.arange(4)}, "seen": np.arange(5)}
    manifest = dump(state, tmp_path / "a.ckpt")
    names = [a["name"] for a in manifest["arrays"]]
    assert len(names) == 3 and "seen" in names
    numbered = [n for n in names if n != "seen"]
    assert all(re.fullmatch(r"array_\d+", n) for n in numbered), names
    assert len(set(numbered)) == 2
    assert_same(load(tmp_path / "a.ckpt", trusted=TRUSTED), state)


@pytest.mark.parametrize("key", ["a.b", "pkl", "manifest.json", "x.npy", ".", "..", "a/.b"])
def test_names_are_sanitized(tmp_path: Any, key: str) -> None:
    state = {key: np.arange(3)}
    manifest = dump(state, tmp_path / "a.ckpt")
    (name,) = [a["name"] for a in manifest["arrays"]]
    assert "." not in name and name not in ("pkl", "manifest.json", "") and name.strip("/")
    assert _members(tmp_path / "a.ckpt") == [name, "pkl", "manifest.json"]
    assert_same(load(tmp_path / "a.ckpt"), state)


def test_a_top_level_array_gets_a_name(tmp_path: Any) -> None:
    array = np.arange(4.0)
    manifest = dump(array, tmp_path / "a.ckpt")
    (name,) = [a["name"] for a in manifest["arrays"]]
    assert name and "." not in name and name not in ("pkl", "manifest.json")
    assert_same(load(tmp_path / "a.ckpt"), array)


def test_colliding_names_are_made_unique(tmp_path: Any) -> None:
    first = dump({"x.y": np.arange(1)}, tmp_path / "one.ckpt")
    (sanitized,) = [a["name"] for a in first["arrays"]]
    state = {"x.y": np.arange(1), sanitized: np.arange(2), "z": {"w": np.arange(3)},
             "z/w": np.arange(4), f"{sanitized}_2": np.arange(5)}
    manifest = dump(state, tmp_path / "a.ckpt")
    names = [a["name"] for a in manifest["arrays"]]
    assert names[:2] == [sanitized, f"{sanitized}_2"]
    assert len(set(names)) == 5 and all("." not in n for n in names)
    assert_same(load(tmp_path / "a.ckpt"), state)


@settings(max_examples=40, **SETTINGS)
@given(state=STATES)
def test_member_list_is_arrays_then_pkl_then_manifest(tmp_path: Any, state: Any) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.ckpt"
    manifest = dump(state, path)
    names = [a["name"] for a in manifest["arrays"]]
    assert _members(path) == [*names, "pkl", "manifest.json"]
    assert len(set(names)) == len(names)
    for name in names:
        assert "." not in name and name not in ("pkl", "manifest.json") and name


# ------------------------------------------------------------------- manifest


def test_manifest_describes_the_archive(tmp_path: Any) -> None:
    state = {"W": np.ones((3, 2), dtype=">f4"), "s": np.array(["ab", "c"]), "e": np.zeros((0, 2))}
    path = tmp_path / "a.ckpt"
    manifest = dump(state, path, metadata={"step": 7, "note": "x"}, protocol=4)
    assert manifest["format"] == "luigi-checkpoint/archive"
    assert manifest["format_version"] == 1
    assert manifest["pickle_protocol"] == 4
    assert manifest["compression"] == "stored"
    assert manifest["metadata"] == {"step": 7, "note": "x"}
    assert manifest["numpy_version"] == np.__version__
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", manifest["created"])
    assert manifest["created"].endswith(("Z", "+00:00"))
    for key in ("library_version", "python_version"):
        assert isinstance(manifest[key], str) and manifest[key]
    described = {a["name"]: a for a in manifest["arrays"]}
    for name, array in state.items():
        entry = described[name]
        assert entry["dtype"] == array.dtype.str
        assert tuple(entry["shape"]) == array.shape
        assert entry["nbytes"] == array.nbytes
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("manifest.json")) == manifest
    assert read_manifest(path) == manifest


MEMBER_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6).filter(
    lambda name: name not in ("pkl", "manifest.json")
)


@settings(max_examples=80, **SETTINGS)
@given(
    arrays=st.dictionaries(MEMBER_NAMES, ARRAYS, max_size=6),
    described=st.sets(st.integers(0, 5), max_size=2),
    compression=st.sampled_from(["stored", "deflate"]),
)
def test_manifest_member_is_what_json_dumps_writes(
    arrays: dict[str, np.ndarray], described: set[int], compression: str
) -> None:
    """The manifest's array entries are encoded once per NPY header, not by
    ``json``: their bytes are still exactly ``json.dumps`` of the returned
    manifest, for any member name, dtype, layout, framework fields and
    compression."""
    names = list(arrays)
    entries = {names[i]: {"framework": "torch", "type": "torch.Tensor", "note": 'a "b" \u00e9'} for i in described if i < len(names)}
    frozen = ArchiveFrozen(b"\x80\x05N.", tuple(arrays.items()), 5, entries)
    out = io.BytesIO()
    manifest = write_frozen(frozen, out, compression=compression, metadata={"step": 3, "name": "\u00e9\n"})
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as zf:
        raw = zf.read("manifest.json")
    assert raw == json.dumps(manifest).encode("utf8")
    listed = json.loads(raw)["arrays"]
    assert [entry["name"] for entry in listed] == names
    for entry, (name, array) in zip(listed, arrays.items()):
        assert (entry["dtype"], tuple(entry["shape"]), entry["nbytes"]) == (array.dtype.str, array.shape, array.nbytes)
        assert {key: entry[key] for key in entries.get(name, {})} == entries.get(name, {})


@settings(max_examples=30, **SETTINGS)
@given(state=STATES)
def test_array_data_starts_at_the_recorded_64_byte_aligned_offset(
    tmp_path: Any, state: Any
) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.ckpt"
    manifest = dump(state, path)
    raw = path.read_bytes()
    arrays = read_arrays(path)
    assert list(arrays) == [a["name"] for a in manifest["arrays"]]
    for entry in manifest["arrays"]:
        array = arrays[entry["name"]]
        offset = entry["offset"]
        assert offset % 64 == 0, entry
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        assert raw[offset:offset + entry["nbytes"]] == array.tobytes(order=order), entry


def test_read_arrays_returns_the_named_arrays_without_unpickling(tmp_path: Any) -> None:
    state = {"model": Layer(W=np.arange(6.0).reshape(2, 3).T, b=np.zeros(2, dtype=">i8"))}
    path = tmp_path / "a.ckpt"
    dump(state, path)
    arrays = read_arrays(path)  # Layer is not trusted: no unpickling happens
    assert list(arrays) == ["model/W", "model/b"]
    assert_array_exact(arrays["model/W"], state["model"].W)
    assert_array_exact(arrays["model/b"], state["model"].b)
    (only,) = read_arrays(path, ["model/b"]).values()
    assert_array_exact(only, state["model"].b)


# --------------------------------------------------- what stays in the pickle


def test_object_arrays_and_subclasses_stay_inside_the_pickle(tmp_path: Any) -> None:
    tagged = np.arange(4.0).view(Tagged)
    state = {"objects": np.array([1, "two", None, 3.5], dtype=object), "tagged": tagged,
             "plain": np.arange(2)}
    manifest = dump(state, tmp_path / "a.ckpt")
    assert [a["name"] for a in manifest["arrays"]] == ["plain"]
    assert _members(tmp_path / "a.ckpt") == ["plain", "pkl", "manifest.json"]
    loaded = load(tmp_path / "a.ckpt", trusted=TRUSTED)
    assert type(loaded["tagged"]) is Tagged
    assert_array_exact(loaded["tagged"], tagged)
    assert loaded["objects"].dtype == object and list(loaded["objects"]) == [1, "two", None, 3.5]


def test_memmap_is_saved_as_plain_data(tmp_path: Any) -> None:
    mm = np.memmap(tmp_path / "data.bin", dtype="<u2", mode="w+", shape=(3, 4))
    mm[:] = np.arange(12).reshape(3, 4)
    manifest = dump({"mm": mm}, tmp_path / "a.ckpt")
    assert [a["name"] for a in manifest["arrays"]] == ["mm"]
    loaded = load(tmp_path / "a.ckpt")["mm"]
    assert type(loaded) is np.ndarray
    assert_array_exact(loaded, np.asarray(mm))


# ------------------------------------------------------------------------ mmap


def test_mmap_load_maps_a_stored_local_archive_read_only(tmp_path: Any) -> None:
    state = {"W": np.arange(4096, dtype="<f8").reshape(64, 64), "F": np.asfortranarray(
        np.arange(12, dtype=">i4").reshape(3, 4)), "b": np.arange(3, dtype="u1")}
    path = tmp_path / "a.ckpt"
    manifest = dump(state, path)
    loaded = load(path, mmap=True)
    for name, array in state.items():
        assert_array_exact(loaded[name], array, name)
        assert not loaded[name].flags.writeable
        with pytest.raises(ValueError):
            loaded[name][(0,) * array.ndim] = 1
    # The arrays are the file: a change on disk shows through.
    offset = next(a["offset"] for a in manifest["arrays"] if a["name"] == "W")
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.float64(-7.0).tobytes())
    assert loaded["W"][0, 0] == -7.0
    with pytest.raises(ChecksumError):
        load(path)


@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_mmap_falls_back_to_reading_elsewhere(root: Any, compression: str) -> None:
    state = {"W": np.arange(20.0).reshape(4, 5), "v": [np.arange(3, dtype=">u2")]}
    path = _path(root)
    dump(state, path, compression=compression, storage_options=root.storage_options)
    assert_same(load(path, mmap=True, storage_options=root.storage_options), state)


# --------------------------------------------------------------- open files


def test_dump_to_and_load_from_open_binary_files(tmp_path: Any) -> None:
    state = {"W": np.arange(10.0), "rng": np.random.default_rng(3), "s": "text"}
    buf = io.BytesIO()
    manifest = dump(state, buf)
    assert [a["name"] for a in manifest["arrays"]][0] == "W"
    buf.seek(0)
    assert_same(load(buf), state)
    (tmp_path / "a.ckpt").write_bytes(buf.getvalue())
    with open(tmp_path / "a.ckpt", "rb") as f:
        assert_same(load(f), state)
        f.seek(0)
        assert read_manifest(f) == manifest


def test_dump_writes_an_unseekable_stream_sequentially() -> None:
    state = {"W": np.arange(1000.0), "T": np.arange(12).reshape(3, 4).T, "x": [1, 2]}
    read_fd, write_fd = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(os.fdopen(read_fd, "rb").read()))
    reader.start()
    with open(write_fd, "wb") as pipe:
        dump(state, pipe)
    reader.join()
    assert_same(load(io.BytesIO(received[0])), state)


# -------------------------------------------------------------------- freeze


def test_freeze_copies_so_the_caller_may_mutate_right_after(tmp_path: Any) -> None:
    W = np.arange(6.0)
    state = {"W": W, "view": W[::2], "n": 1}
    frozen = freeze(state)
    W[:] = -1
    state["n"] = 2
    with open(tmp_path / "a.ckpt", "wb") as f:
        write_frozen(frozen, f, metadata={"k": 1})
    loaded = load(tmp_path / "a.ckpt")
    assert_array_exact(loaded["W"], np.arange(6.0))
    assert_array_exact(loaded["view"], np.arange(0.0, 6.0, 2))
    assert loaded["n"] == 1
    assert read_manifest(tmp_path / "a.ckpt")["metadata"] == {"k": 1}
