"""The archive stays readable by plain ``numpy.load`` and by Theano's
``pkl_utils``, and ``luigi_checkpoint.storage.archive.load`` reads what Theano wrote.

Theano is not installed: ``helpers_archive.theano_dump``/``theano_load``
follow ``theano.misc.pkl_utils`` line by line (DESIGN section 1).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import pytest

from .helpers_archive import (
    TRUSTED,
    CudaNdarray,
    GpuArray,
    Layer,
    Plain,
    RawMember,
    Ref,
    assert_array_exact,
    assert_same,
    build_zip,
    npy_bytes,
    pickle_with_ids,
    ref_ids,
    theano_dump,
    theano_load,
)
from luigi_checkpoint.storage.archive import dump, load, read_arrays, verify
from luigi_checkpoint.storage.errors import UnloadableArchiveError


def _state() -> dict[str, Any]:
    W = np.arange(12, dtype="<f4").reshape(3, 4)
    return {
        "model": {"W": W, "b": np.zeros(4, dtype=">f8"), "tied": W},
        "optimizer": {"velocity": [np.ones((2, 2)), np.asfortranarray(np.eye(3, dtype="<i2"))]},
        "names": np.array(["alpha", "b"]),
        "bytes": np.array([b"x", b"yz"]),
        "flags": np.array([True, False]),
        "complex": np.array([1 + 2j, np.nan], dtype="<c16"),
        "empty": np.zeros((0, 3), dtype="u8"),
        "scalar0d": np.array(5, dtype=">i4"),
        "view": np.arange(10)[::3],
        "step": 12,
        "lr": 0.5,
        "tags": ("a", "b"),
    }


# ----------------------------------------------------------------- numpy.load


def test_numpy_load_lists_the_array_members_by_name(tmp_path: Any) -> None:
    state = _state()
    path = tmp_path / "a.ckpt"
    manifest = dump(state, path)
    names = [a["name"] for a in manifest["arrays"]]
    with np.load(path) as npz:
        assert npz.files == [*names, "pkl", "manifest.json"]
        arrays = {name: npz[name] for name in names}
    expected = {
        "model/W": state["model"]["W"], "model/b": state["model"]["b"],
        "optimizer/velocity/0": state["optimizer"]["velocity"][0],
        "optimizer/velocity/1": state["optimizer"]["velocity"][1],
        **{k: state[k] for k in ("names", "bytes", "flags", "complex", "empty", "scalar0d",
                                 "view")},
    }
    assert names == list(expected)
    for name, array in expected.items():
        assert_array_exact(arrays[name], array, name)


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_numpy_load_gives_pkl_and_manifest_as_raw_bytes(tmp_path: Any, allow_pickle: bool) -> None:
    path = tmp_path / "a.ckpt"
    dump(_state(), path)
    with zipfile.ZipFile(path) as zf:
        pkl, manifest = zf.read("pkl"), zf.read("manifest.json")
    with np.load(path, allow_pickle=allow_pickle) as npz:
        assert npz["pkl"] == pkl
        assert npz["manifest.json"] == manifest


def test_numpy_load_reads_an_archive_on_any_storage(root: Any) -> None:
    state = {"W": np.arange(6.0).reshape(2, 3), "b": np.arange(2, dtype=">i8")}
    path = root.join("a.ckpt")
    dump(state, path, storage_options=root.storage_options)
    with root.fs().open(path, "rb") as f, np.load(f) as npz:
        for name, array in state.items():
            assert_array_exact(npz[name], array, name)


def test_numpy_load_reads_a_deflated_archive(tmp_path: Any) -> None:
    state = _state()
    dump(state, tmp_path / "a.ckpt", compression="deflate")
    with np.load(tmp_path / "a.ckpt") as npz:
        assert_array_exact(npz["model/W"], state["model"]["W"])
        assert_array_exact(npz["optimizer/velocity/1"], state["optimizer"]["velocity"][1])


# ----------------------------------------------------- Theano reads our archives


@pytest.mark.parametrize("compression", ["stored", "deflate"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_theano_loader_reads_our_archives(tmp_path: Any, compression: str, protocol: int) -> None:
    state = {**_state(), "layer": Layer(W=np.ones(3), b=np.zeros(1)), "plain": Plain([np.eye(2)])}
    path = tmp_path / "a.ckpt"
    dump(state, path, compression=compression, protocol=protocol)
    loaded = theano_load(str(path))
    assert_same(loaded, state)
    assert loaded["model"]["W"] is loaded["model"]["tied"]


def test_theano_loader_reads_our_archive_from_an_open_file() -> None:
    state = _state()
    buf = io.BytesIO()
    dump(state, buf)
    buf.seek(0)
    assert_same(theano_load(buf), state)


# ---------------------------------------------------- we read Theano's archives


def _theano_state() -> dict[str, Any]:
    W = np.arange(6, dtype="<f4").reshape(2, 3)
    return {
        "params": [W, np.zeros(3, dtype=">f8")],
        "tied": W,
        "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
        "names": np.array(["ab", "c"]),
        "meta": {"epoch": 3, "lr": 0.01, "name": "mlp", "shape": (2, 3), "ok": True, "n": None},
    }


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
@pytest.mark.parametrize("protocol", [0, 2])
def test_load_reads_theano_ndarray_archives(tmp_path: Any, protocol: int, compression: int) -> None:
    state = _theano_state()
    path = tmp_path / "theano.zip"
    theano_dump(state, str(path), protocol=protocol, compression=compression)
    with zipfile.ZipFile(path) as zf:
        assert "manifest.json" not in zf.namelist()
    loaded = load(path)
    assert_same(loaded, state)
    assert loaded["tied"] is loaded["params"][0]


@pytest.mark.parametrize("protocol", [0, 2])
def test_load_reads_theano_archives_holding_trusted_objects(tmp_path: Any, protocol: int) -> None:
    state = {"layer": Layer(W=np.arange(3.0), b=np.ones(2)), "plain": Plain(np.eye(2), "x")}
    buf = io.BytesIO()
    theano_dump(state, buf, protocol=protocol, compression=zipfile.ZIP_DEFLATED)
    buf.seek(0)
    assert_same(load(buf, trusted=TRUSTED), state)


@pytest.mark.parametrize("protocol", [0, 2])
def test_load_reads_numpy_scalars_from_theano_archives(tmp_path: Any, protocol: int) -> None:
    state = {"lr": np.float32(0.25), "step": np.int64(7), "arr": np.arange(3)}
    buf = io.BytesIO()
    theano_dump(state, buf, protocol=protocol, compression=zipfile.ZIP_DEFLATED)
    buf.seek(0)
    assert_same(load(buf), state)


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
@pytest.mark.parametrize("protocol", [0, 2])
@pytest.mark.parametrize("context_name", ["dev0", None])
def test_load_reads_theano_gpu_arrays_as_numpy_arrays(
    tmp_path: Any, protocol: int, compression: int, context_name: str | None
) -> None:
    W, b, c = np.arange(6.0).reshape(2, 3), np.arange(3, dtype="<f4"), np.eye(2, dtype=">f8")
    gpu = GpuArray(b, context_name)
    state = {"cuda": CudaNdarray(W), "gpu": gpu, "again": gpu, "host": c}
    path = tmp_path / "theano.zip"
    theano_dump(state, str(path), protocol=protocol, compression=compression)
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read("pkl")
    assert b"cuda_ndarray.array_0" in pkl and b"gpuarray.array_1" in pkl
    loaded = load(path)
    assert list(loaded) == ["cuda", "gpu", "again", "host"]
    assert_array_exact(loaded["cuda"], W)
    assert_array_exact(loaded["gpu"], b)
    assert loaded["again"] is loaded["gpu"]
    assert_array_exact(loaded["host"], c)


def _objects_state() -> dict[str, Any]:
    return {
        "objects": np.array([1, "two", None, {"three": [3.0]}, (4, b"four")], dtype=object),
        "grid": np.array([[1, "a"], [None, 2.5]], dtype=object, order="F"),
        "records": np.array([(1, "x"), (2, None)], dtype=[("n", "<i4"), ("o", "O")]),
        "none_yet": np.empty((2, 0), dtype=object),
        "weights": np.arange(3.0),
    }


def _assert_same_objects(loaded: np.ndarray, orig: np.ndarray, name: str) -> None:
    assert loaded.dtype == orig.dtype and loaded.shape == orig.shape, name
    assert repr(loaded.tolist()) == repr(orig.tolist()), name


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
@pytest.mark.parametrize("protocol", [0, 2])
def test_load_unsafe_reads_theano_object_arrays(tmp_path: Any, protocol: int, compression: int) -> None:
    """Theano's pkl_utils saved object arrays with numpy.save's pickling."""
    state = _objects_state()
    path = tmp_path / "theano.zip"
    theano_dump(state, str(path), protocol=protocol, compression=compression)
    loaded = load(path, unsafe=True)
    assert list(loaded) == list(state)
    for name in ("objects", "grid", "records", "none_yet"):
        _assert_same_objects(loaded[name], state[name], name)
    assert_array_exact(loaded["weights"], state["weights"])


def test_safe_load_refuses_theano_object_arrays_naming_the_way_out(tmp_path: Any) -> None:
    path = tmp_path / "theano.zip"
    theano_dump(_objects_state(), str(path), protocol=2, compression=zipfile.ZIP_DEFLATED)
    for call in (lambda: load(path, trusted=TRUSTED), lambda: read_arrays(path)):
        with pytest.raises(UnloadableArchiveError) as info:
            call()
        assert f"{path}: member 'array_0' holds an object array" in str(info.value)
        assert "unsafe=True" in str(info.value)
    assert verify(path) == []


def test_renames_apply_inside_theano_object_arrays() -> None:
    """The arrays' pickles go through the loader the archive's pickle goes through."""
    member = npy_bytes(np.array([Plain(1)], dtype=object))
    moved = member.replace(b"tests.helpers_archive", b"tests.helpers_moved__")
    pkl = pickle_with_ids({"objects": Ref("ndarray.array_0")}, ref_ids, protocol=2)
    data = build_zip([RawMember("array_0", moved), RawMember("pkl", pkl)])
    loaded = load(io.BytesIO(data), unsafe=True, renames={"tests.helpers_moved__": "tests.helpers_archive"})
    assert isinstance(loaded["objects"][0], Plain) and loaded["objects"][0].value == 1


def test_theano_round_trip_through_both_readers(tmp_path: Any) -> None:
    """Theano writes, we load and dump again, Theano reads the result."""
    state = _theano_state()
    theano_dump(state, str(tmp_path / "theano.zip"), protocol=2, compression=zipfile.ZIP_DEFLATED)
    dump(load(tmp_path / "theano.zip"), tmp_path / "ours.ckpt")
    assert_same(theano_load(str(tmp_path / "ours.ckpt")), state)
