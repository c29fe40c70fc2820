"""luigi_checkpoint.storage.snapshot: numpy-only snapshots that numpy alone reads, checked on load,
exported from checkpoint archives without unpickling anything."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from luigi_checkpoint.storage import archive
from luigi_checkpoint.storage.errors import (
    ArchiveError,
    BadNpyHeaderError,
    ChecksumError,
    MissingMemberError,
    NotAnArchiveError,
    UntrustedTypeError,
)
from luigi_checkpoint.storage.fs import Location, fresh_listing, resolve
from luigi_checkpoint.storage.snapshot import (
    FORMAT,
    load_snapshot,
    read_snapshot_manifest,
    save_snapshot,
    snapshot_from_archive,
)

from . import helpers_snapshot
from .conftest import Root


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {
        "model/W": rng.standard_normal((16, 8)),
        "model/b": np.arange(8, dtype=np.float32),
        "optimizer/velocity/0": np.asfortranarray(rng.integers(0, 9, (3, 5), dtype=np.int16)),
        "strided": np.arange(40, dtype=">i8")[::3],
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), dtype=np.uint8),
        "records": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", ">f8")]),
        "big": np.arange(6 * 2**20 // 8, dtype=np.float64),  # past one S3 upload part
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, a in want.items():
        assert got[name].dtype == a.dtype, name
        assert got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a, err_msg=name)


def local_snapshot(tmp_path: Any, arrays: dict[str, np.ndarray] | None = None) -> str:
    path = str(tmp_path / "snap.zip")
    save_snapshot(arrays if arrays is not None else sample_arrays(), path, {"loss": 0.25})
    return path


def rewrite(src: str, dest: str, replace: dict[str, bytes]) -> None:
    """Copy a ZIP member by member (fresh CRCs), replacing some members' bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info)))


def npy_bytes(a: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_snapshot_round_trips_every_array_exactly(root: Root) -> None:
    arrays = sample_arrays()
    save_snapshot(arrays, root.join("snap.zip"), storage_options=root.storage_options)
    assert_same(load_snapshot(root.join("snap.zip"), storage_options=root.storage_options), arrays)


def test_numpy_load_without_pickle_reads_every_array(root: Root) -> None:
    arrays = sample_arrays()
    save_snapshot(arrays, root.join("snap.zip"), storage_options=root.storage_options)
    location = resolve(root.join("snap.zip"), root.storage_options)
    fs, path = location.fs, location.path
    with fs.open(path, "rb") as f, np.load(f, allow_pickle=False) as snap:
        assert snap.files == [*arrays, "manifest.json"]
        assert_same({name: snap[name] for name in arrays}, arrays)
        assert json.loads(snap["manifest.json"])["format"] == FORMAT


def test_numpy_load_reads_a_local_snapshot_by_path(tmp_path: Any) -> None:
    path = local_snapshot(tmp_path)
    with np.load(path, allow_pickle=False) as snap:
        weights = snap["model/W"]
    np.testing.assert_array_equal(weights, sample_arrays()["model/W"])


def test_manifest_describes_arrays_source_and_metadata(tmp_path: Any) -> None:
    arrays = sample_arrays()
    dest = str(tmp_path / "snap.zip")
    returned = save_snapshot(
        arrays, dest, {"loss": 0.25, "tags": ["a"]}, source={"url": "s3://b/run/x.zip", "step": 7}
    )
    manifest = read_snapshot_manifest(dest)
    assert manifest == returned
    assert manifest["format"] == FORMAT and manifest["format_version"] == 1
    assert manifest["created"].endswith("+00:00")
    assert manifest["source"] == {"url": "s3://b/run/x.zip", "step": 7}
    assert manifest["metadata"] == {"loss": 0.25, "tags": ["a"]}
    entries = {entry["name"]: entry for entry in manifest["arrays"]}
    assert list(entries) == list(arrays)
    with zipfile.ZipFile(dest) as zf:
        for name, a in arrays.items():
            assert entries[name]["member"] == f"{name}.npy"
            assert entries[name]["dtype"] == a.dtype.str
            assert entries[name]["shape"] == list(a.shape)
            assert entries[name]["nbytes"] == a.nbytes
            member = zf.read(f"{name}.npy")
            data_after_header = member[len(member) - a.nbytes :]
            assert entries[name]["sha256"] == hashlib.sha256(data_after_header).hexdigest(), name


def test_array_data_is_64_byte_aligned_in_the_file(tmp_path: Any) -> None:
    arrays = sample_arrays()
    path = local_snapshot(tmp_path, arrays)
    raw = open(path, "rb").read()
    with zipfile.ZipFile(path) as zf:
        for name, a in arrays.items():
            if a.nbytes:
                member = zf.read(f"{name}.npy")
                assert raw.find(member[len(member) - a.nbytes :]) % 64 == 0, name


def test_changed_byte_is_a_checksum_error_naming_snapshot_and_array(tmp_path: Any) -> None:
    marker = np.full(64, 0x5A, dtype=np.uint8)
    path = local_snapshot(tmp_path, {"a": np.zeros(4), "marker": marker})
    data = bytearray(open(path, "rb").read())
    data[data.find(marker.tobytes()) + 10] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(ChecksumError, match=r"snap\.zip.*'marker\.npy'.*CRC"):
        load_snapshot(path)


def test_changed_array_under_a_valid_crc_fails_its_sha256(tmp_path: Any) -> None:
    path = local_snapshot(tmp_path)
    tampered = str(tmp_path / "tampered.zip")
    changed = sample_arrays()["model/b"] + 1
    rewrite(path, tampered, {"model/b.npy": npy_bytes(changed)})
    with pytest.raises(ChecksumError, match=r"tampered\.zip.*'model/b'.*SHA-256"):
        load_snapshot(tampered)


def test_object_member_is_refused_without_unpickling(tmp_path: Any) -> None:
    path = local_snapshot(tmp_path, {"x": np.zeros(2)})
    hostile = np.array([helpers_snapshot.Tripwire(), 1], dtype=object)
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    manifest["arrays"][0]["dtype"] = "|O"
    bad = str(tmp_path / "bad.zip")
    rewrite(
        path,
        bad,
        {"x.npy": npy_bytes(hostile, allow_pickle=True), "manifest.json": json.dumps(manifest).encode()},
    )
    with pytest.raises(BadNpyHeaderError, match=r"bad\.zip.*'x\.npy'.*object"):
        load_snapshot(bad)
    assert helpers_snapshot.UNPICKLED == []


def test_object_arrays_cannot_be_saved(tmp_path: Any) -> None:
    arrays = {"ok": np.zeros(3), "x": np.array([{}, 1], dtype=object)}
    with pytest.raises(TypeError, match="'x'.*pickle"):
        save_snapshot(arrays, str(tmp_path / "s.zip"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "back\\slash", "manifest.json"])
def test_bad_array_names_are_refused(tmp_path: Any, name: str) -> None:
    with pytest.raises(ValueError, match="invalid array name"):
        save_snapshot({name: np.zeros(1)}, str(tmp_path / "s.zip"))


def test_metadata_must_be_json(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="JSON"):
        save_snapshot({"x": np.zeros(1)}, str(tmp_path / "s.zip"), {"when": object()})
    assert list(tmp_path.iterdir()) == []


class FailingSource(Mapping[str, np.ndarray]):
    """Arrays produced one by one while the snapshot is written; the last fails."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __getitem__(self, name: str) -> np.ndarray:
        if name == self.names[-1]:
            raise OSError(f"source of {name} vanished")
        return np.full(2**20, 3.0)  # 8 MiB, more than one S3 upload part

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def test_failed_write_publishes_nothing_and_keeps_the_old_snapshot(root: Root) -> None:
    dest = root.join("run/snap.zip")
    save_snapshot({"x": np.ones(3)}, dest, storage_options=root.storage_options)
    with pytest.raises(OSError, match="source of c vanished"):
        save_snapshot(FailingSource(["a", "b", "c"]), dest, storage_options=root.storage_options)
    location = resolve(root.join("run"), root.storage_options)
    assert [e["name"].rsplit("/", 1)[-1] for e in fresh_listing(location)] == ["snap.zip"]
    assert_same(load_snapshot(dest, storage_options=root.storage_options), {"x": np.ones(3)})


def test_garbage_is_not_an_archive(tmp_path: Any) -> None:
    path = tmp_path / "junk.zip"
    path.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(NotAnArchiveError, match="junk.zip"):
        load_snapshot(str(path))


def test_truncated_snapshot_is_an_archive_error(tmp_path: Any) -> None:
    path = local_snapshot(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="snap.zip"):
        load_snapshot(path)


def test_zip_without_manifest_is_not_a_snapshot(tmp_path: Any) -> None:
    path = str(tmp_path / "plain.zip")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", npy_bytes(np.zeros(2)))
    with pytest.raises(MissingMemberError, match=r"plain\.zip.*manifest\.json"):
        load_snapshot(path)


def test_missing_and_unlisted_members_are_errors(tmp_path: Any) -> None:
    path = local_snapshot(tmp_path, {"a": np.zeros(2), "b": np.ones(2)})
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    missing = str(tmp_path / "missing.zip")
    with zipfile.ZipFile(missing, "w") as zf:
        for name, data in members.items():
            if name != "b.npy":
                zf.writestr(name, data)
    with pytest.raises(MissingMemberError, match=r"missing\.zip.*'b'"):
        load_snapshot(missing)
    extra = str(tmp_path / "extra.zip")
    rewrite(path, extra, {})
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("sneaky.npy", npy_bytes(np.zeros(1)))
    with pytest.raises(ArchiveError, match=r"extra\.zip.*sneaky\.npy"):
        load_snapshot(extra)


# -- export from checkpoint archives ------------------------------------------


def dump_checkpoint(root: Root, step: int = 7) -> str:
    url = root.join(f"run/step-{step:012d}.zip")
    archive.dump(
        helpers_snapshot.training_state(seed=step),
        url,
        metadata={"loss": 0.5},
        storage_options=root.storage_options,
    )
    return url


def test_export_of_untrusted_pickle_reads_arrays_without_unpickling(root: Root) -> None:
    src = dump_checkpoint(root)
    with pytest.raises(UntrustedTypeError, match="helpers_snapshot"):
        archive.load(src, storage_options=root.storage_options)
    dest = root.join("export/snapshot.zip")
    manifest = snapshot_from_archive(src, dest, step=7, storage_options=root.storage_options)
    assert helpers_snapshot.UNPICKLED == []
    model = helpers_snapshot.Model(seed=7)
    assert_same(
        load_snapshot(dest, storage_options=root.storage_options),
        {"model/W": model.W, "model/b": model.b},
    )
    assert manifest["source"]["step"] == 7
    assert manifest["source"]["url"].endswith("run/step-000000000007.zip")
    assert manifest["metadata"]["loss"] == 0.5


def test_export_selects_by_name_and_glob(tmp_path: Any) -> None:
    src = dump_checkpoint(Root("local", str(tmp_path)))
    dest = str(tmp_path / "only-b.zip")
    snapshot_from_archive(src, dest, ["model/b"])
    assert list(load_snapshot(dest)) == ["model/b"]
    snapshot_from_archive(src, dest, "model/*")
    assert list(load_snapshot(dest)) == ["model/W", "model/b"]


def test_export_pattern_matching_nothing_names_it(tmp_path: Any) -> None:
    src = dump_checkpoint(Root("local", str(tmp_path)))
    dest = tmp_path / "none.zip"
    with pytest.raises(MissingMemberError, match=r"'optim\*'.*model/W"):
        snapshot_from_archive(src, str(dest), ["model/W", "optim*"])
    assert not dest.exists()


def test_export_metadata_extends_the_archive_metadata(tmp_path: Any) -> None:
    src = dump_checkpoint(Root("local", str(tmp_path)))
    manifest = snapshot_from_archive(src, str(tmp_path / "s.zip"), metadata={"note": "nightly"})
    assert manifest["metadata"]["loss"] == 0.5
    assert manifest["metadata"]["note"] == "nightly"


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,6}(/[a-z0-9_]{1,6}){0,2}", fullmatch=True),
        hnp.arrays(
            dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes()),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ).map(lambda a: a.T if a.ndim > 1 else a),
        max_size=4,
    )
)
def test_any_plain_dtype_and_layout_round_trips(arrays: dict[str, np.ndarray]) -> None:
    save_snapshot(arrays, "memory://prop/snap.zip")
    got = load_snapshot("memory://prop/snap.zip")
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        assert got[name].tobytes() == a.tobytes(), name  # bit-exact, NaNs included


def test_export_holds_one_array_in_memory_at_a_time(tmp_path: Any) -> None:
    size = 4 * 2**20
    state = {f"layer{i}": np.full(size // 8, float(i)) for i in range(6)}
    src = str(tmp_path / "run" / "step-000000000001.zip")
    archive.dump(state, src)
    tracemalloc.start()
    try:
        snapshot_from_archive(src, str(tmp_path / "snap.zip"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * size  # reading the whole state first would take 6 arrays
    assert_same(load_snapshot(str(tmp_path / "snap.zip")), state)


def test_export_of_an_open_archive_records_the_step_its_caller_gives(tmp_path: Path) -> None:
    src = str(tmp_path / "any-name.zip")
    archive.dump({"w": np.arange(3.0)}, src)
    with archive.open_archive(src) as checkpoint:
        manifest = snapshot_from_archive(checkpoint, str(tmp_path / "s.zip"), step=12)
    assert manifest["source"] == {"url": src, "step": 12}
    assert snapshot_from_archive(src, str(tmp_path / "t.zip"))["source"]["step"] is None
