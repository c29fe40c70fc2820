"""Luigi targets over fsspec, on local disk, file://, memory:// and S3."""

from __future__ import annotations

import numpy as np
import pytest

from luigi_checkpoint.tasks.targets import CheckpointTarget, FsspecTarget, SnapshotTarget
from tests.conftest import Root


def test_checkpoint_target_dumps_atomically_and_loads(root: Root) -> None:
    target = CheckpointTarget(root.join("run", "final.zip"), storage_options=root.storage_options)
    assert not target.exists()
    state = {"weights": np.arange(6.0).reshape(2, 3), "step": 3, "rng": np.random.default_rng(7)}
    target.dump(state, metadata={"note": "hello"})
    assert target.exists()
    loaded = target.load()
    assert np.array_equal(loaded["weights"], state["weights"]) and loaded["step"] == 3
    assert loaded["rng"].bit_generator.state == state["rng"].bit_generator.state
    assert target.manifest()["metadata"]["note"] == "hello"


def test_exists_sees_an_object_another_client_wrote(root: Root) -> None:
    target = SnapshotTarget(root.join("day", "snapshot.zip"), storage_options=root.storage_options)
    folder = root.join("day")
    with FsspecTarget(root.join("day", "other"), storage_options=root.storage_options).open("w") as f:
        f.write(b"x")
    assert not target.exists()
    target.fs.fsspec.ls(target.fs.fsspec._strip_protocol(folder))  # a cached listing without the snapshot
    other = type(root.fs())(skip_instance_cache=True, **root.storage_options)
    other.pipe_file(other._strip_protocol(root.join("day", "snapshot.zip")), b"written elsewhere")
    assert target.exists()


def test_open_for_writing_publishes_only_a_finished_file(root: Root) -> None:
    target = FsspecTarget(root.join("blob.bin"), storage_options=root.storage_options)
    with pytest.raises(RuntimeError, match="midway"):
        with target.open("w") as f:
            f.write(b"half")
            raise RuntimeError("midway")
    assert not target.exists()
    with target.open("w") as f:
        f.write(b"whole")
    with target.open("r") as f:
        assert f.read() == b"whole"
    with pytest.raises(ValueError, match="unsupported mode"):
        target.open("a")


def test_listdir_of_a_date_glob_gives_the_target_paths_as_range_tools_need(root: Root) -> None:
    days = ["2026-01-01", "2026-01-02", "2026-02-11"]
    targets = [FsspecTarget(root.join("exports", "run", day, "snapshot.zip"), storage_options=root.storage_options) for day in days]
    for target in targets:
        with target.open("w") as f:
            f.write(b"snapshot")
    with FsspecTarget(root.join("exports", "run", "notes", "x"), storage_options=root.storage_options).open("w") as f:
        f.write(b"not a day")
    fs = targets[0].fs
    run_folder = targets[0].path.rsplit("/", 2)[0]
    glob = f"{run_folder}/2026-0[0-9]-[0-9][0-9]"
    assert fs.exists(glob)
    assert sorted(fs.listdir(glob)) == sorted(t.path for t in targets)
    assert not fs.exists(f"{run_folder}/2031-[0-9][0-9]-[0-9][0-9]")
    assert fs.listdir(f"{run_folder}/2026-01-02") == [targets[1].path]


def test_filesystem_removes_and_tells_folders(root: Root) -> None:
    target = FsspecTarget(root.join("a", "b", "c.bin"), storage_options=root.storage_options)
    with target.open("w") as f:
        f.write(b"c")
    folder = target.path.rsplit("/", 1)[0]
    assert target.fs.isdir(folder) and not target.fs.isdir(target.path)
    target.remove()
    assert not target.exists()
