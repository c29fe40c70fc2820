"""``ckpt`` given the wrong kind of path, a missing one, a destination to protect,
a misspelled option: one clear line each, saying what to do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.snapshot import load_snapshot, save_snapshot

from .conftest import make_root
from .test_cli import Store, assert_one_line_error, cli_options, local_store, make_store, run  # noqa: F401 (fixture)


@pytest.mark.parametrize("command", ["ls", "verify", "prune", "inspect", "audit", "runs", "history"])
def test_every_command_says_the_same_for_a_missing_path(command: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    extra = ["--keep-last", "1"] if command == "prune" else []
    result = run(command, missing, *extra)
    assert_one_line_error(result, 1)
    assert result.stderr == f"ckpt: error: {missing}: no such file or folder\n"


def test_export_of_a_missing_source_says_so(tmp_path: Path) -> None:
    result = run("export", str(tmp_path / "nothing-here"), str(tmp_path / "snap.zip"))
    assert_one_line_error(result, 1)
    assert "nothing-here: no such file or folder" in result.stderr
    assert not (tmp_path / "snap.zip").exists()


@pytest.mark.parametrize("command", ["inspect", "audit"])
def test_inspect_and_audit_of_a_folder_point_to_ls(command: str, local_store: Store) -> None:
    result = run(command, local_store.url)
    assert_one_line_error(result, 1)
    assert f"{local_store.url} is a folder: ckpt {command} takes one archive" in result.stderr
    assert f"ckpt ls {local_store.url}" in result.stderr


def test_ls_of_an_archive_points_to_inspect(local_store: Store) -> None:
    result = run("ls", local_store.archive(100))
    assert_one_line_error(result, 1)
    assert f"is a file: ckpt ls takes a run folder (ckpt inspect {local_store.archive(100)}" in result.stderr


def test_export_makes_a_missing_folder_only_with_parents(local_store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "dir" / "snap.zip"
    refused = run("export", local_store.url, str(dest))
    assert_one_line_error(refused, 1)
    assert f"folder {dest.parent} does not exist; pass --parents" in refused.stderr
    assert not (tmp_path / "new").exists()
    made = run("export", local_store.url, str(dest), "--parents")
    assert made.returncode == 0, made.stderr
    assert sorted(load_snapshot(dest)) == ["model/W", "model/b"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_export_overwrites_only_with_force(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = make_store(make_root(kind, tmp_path, request))
    dest = store.root.join("snap.zip")
    options = store.root.storage_options
    save_snapshot({"old": np.zeros(2)}, dest, storage_options=options)
    refused = store.ckpt("export", store.url, dest)
    assert_one_line_error(refused, 1)
    assert f"{dest} exists: pass --force to overwrite it" in refused.stderr
    assert list(load_snapshot(dest, storage_options=options)) == ["old"]
    forced = store.ckpt("export", store.url, dest, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(load_snapshot(dest, storage_options=options)) == ["model/W", "model/b"]


def test_export_into_a_folder_asks_for_a_file_name_and_leaves_nothing(local_store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    result = run("export", local_store.url, str(folder))
    assert_one_line_error(result, 1)
    assert f"{folder} is a folder: give the snapshot's file name, e.g. {folder}/snapshot.zip" in result.stderr
    assert list(folder.iterdir()) == []


def test_a_misspelled_option_is_named_with_the_right_one(local_store: Store) -> None:
    result = run("prune", local_store.url, "--keep-lst", "2")
    assert_one_line_error(result, 2)
    assert "unknown option --keep-lst; did you mean --keep-last?" in result.stderr
    assert CheckpointStore(local_store.url, keep_last=None).steps() == [100, 200, 300]


def test_prune_lists_damaged_archives_apart_from_the_kept_ones(local_store: Store) -> None:
    local_store.rewrite(300, lambda data: data[:100])
    result = run("prune", local_store.url, "--keep-last", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"removed": [100], "kept": [200], "damaged": [300], "dry_run": False}
    text = run("prune", local_store.url, "--keep-last", "2", "--dry-run").stdout.splitlines()
    assert text == ["would remove 0, kept 1: 200", "damaged, left for ckpt verify: 300"]


def test_a_trusted_name_matching_no_global_is_flagged(local_store: Store) -> None:
    result = run("audit", local_store.archive(100), "--trust", "tests.helpers_snapshot.Modle",
                 "--trust", "tests.helpers_snapshot.Model")
    assert "--trust tests.helpers_snapshot.Modle matches no global" in result.stderr
    assert "--trust tests.helpers_snapshot.Model " not in result.stderr


def test_verify_of_an_export_folder_checks_its_snapshots(local_store: Store, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    for day in ("2026-12-01", "2026-12-02"):
        made = run("export", local_store.url, str(exports / "TrainMLP" / "abc" / day / "snapshot.zip"),
                   "--parents")
        assert made.returncode == 0, made.stderr
    bad = exports / "TrainMLP" / "abc" / "2026-12-02" / "snapshot.zip"
    bad.write_bytes(bad.read_bytes()[:-30])
    result = run("verify", str(exports))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"ok   {exports}/TrainMLP/abc/2026-12-01/snapshot.zip"
    assert lines[1] == f"BAD  {bad}"
    assert lines[-1] == "2 checked, 1 bad"


def test_s3_paths_that_do_not_exist_say_so(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    root = make_root("s3", tmp_path, request)
    result = run("ls", root.url, *cli_options(root.storage_options))
    assert_one_line_error(result, 1)
    assert result.stderr == f"ckpt: error: {root.url}: no such file or folder\n"
