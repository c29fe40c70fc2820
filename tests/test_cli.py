"""The ``ckpt`` command, run as a subprocess against stores on local disk and S3."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.fs import resolve
from luigi_checkpoint.storage.snapshot import load_snapshot, save_snapshot

from . import helpers_snapshot
from .conftest import BUCKET, Root, S3Server, make_root

CKPT = os.path.join(os.path.dirname(sys.executable), "ckpt")
STEPS = (100, 200, 300)


@dataclass(frozen=True)
class Store:
    """A run folder with checkpoints of ``STEPS`` and the ``ckpt`` options to reach it."""

    root: Root
    options: tuple[str, ...]

    @property
    def url(self) -> str:
        return self.root.url

    def archive(self, step: int) -> str:
        return self.root.join(f"step-{step:012d}.zip")

    def ckpt(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run(*args, *self.options, env=env)

    def rewrite(self, step: int, change: Any) -> None:
        location = resolve(self.archive(step), self.root.storage_options)
        fs, path = location.fs, location.path
        fs.pipe_file(path, change(fs.cat_file(path)))
        fs.invalidate_cache()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CKPT, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def cli_options(storage_options: dict[str, Any]) -> tuple[str, ...]:
    """``--storage-option`` flags for a dict, nested keys dotted."""
    flags: list[str] = []
    for key, value in storage_options.items():
        if isinstance(value, dict):
            flags += [f"{key}.{flag[len('--storage-option=') :]}" for flag in cli_options(value)]
        else:
            flags.append(f"{key}={value}")
    return tuple(f"--storage-option={flag}" for flag in flags)


def flip_byte_of(array: np.ndarray) -> Any:
    def change(data: bytes) -> bytes:
        at = data.find(array.tobytes()) + 3
        return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]

    return change


def make_store(root: Root) -> Store:
    checkpoints = CheckpointStore(root.url, keep_last=None, storage_options=root.storage_options)
    for step in STEPS:
        checkpoints.save(step, helpers_snapshot.training_state(seed=step), {"loss": 1000 / step})
    return Store(root, cli_options(root.storage_options))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Store:
    """Checkpoints of ``STEPS`` on local disk and on S3."""
    return make_store(make_root(request.param, tmp_path, request))


@pytest.fixture
def local_store(request: pytest.FixtureRequest, tmp_path: Any) -> Store:
    """Checkpoints of ``STEPS`` on local disk only (for tests of options, not storage)."""
    return make_store(make_root("local", tmp_path, request))


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> None:
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("ckpt: error: ")


# -- ls ---------------------------------------------------------------------


def test_ls_lists_steps_newest_last_and_marks_damaged_ones(store: Store) -> None:
    store.rewrite(100, lambda data: data[: len(data) // 2])
    result = store.ckpt("ls", store.url)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["STEP", "SIZE", "CREATED"]
    assert [int(row.split()[0]) for row in rows] == list(STEPS)
    assert "DAMAGED" in rows[0] and "step-000000000100.zip" in rows[0]
    assert rows[1].endswith("loss=5") and rows[2].endswith("loss=3.333")
    assert "DAMAGED" not in rows[1] + rows[2]


def test_ls_json_is_machine_readable(local_store: Store) -> None:
    store = local_store
    store.rewrite(100, lambda data: b"\0" * len(data))
    entries = json.loads(store.ckpt("ls", store.url, "--json").stdout)
    assert [e["step"] for e in entries] == list(STEPS)
    assert [e["ok"] for e in entries] == [False, True, True]
    assert entries[1]["metadata"]["loss"] == 5.0
    assert entries[1]["url"].endswith("step-000000000200.zip")
    assert entries[2]["size"] > 0


@pytest.mark.parametrize("command", [["ls"], ["prune", "--keep-last", "1"]])
def test_python_dash_m_runs_the_command_and_an_empty_folder_is_an_error(
    tmp_path: Any, command: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "luigi_checkpoint.storage.cli", *command, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert_one_line_error(result, 1)
    assert "no checkpoints" in result.stderr and str(tmp_path) in result.stderr


# -- inspect ----------------------------------------------------------------


def test_inspect_shows_manifest_metadata_and_arrays(store: Store) -> None:
    result = store.ckpt("inspect", store.archive(200))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "luigi-checkpoint/archive" in out
    assert '"loss": 5.0' in out
    table = out[out.index("NAME") :].splitlines()
    assert table[0].split() == ["NAME", "DTYPE", "SHAPE", "SIZE"]
    rows = {line.split()[0]: line for line in table[1:-1]}
    assert set(rows) == {"model/W", "model/b"}
    assert "<f8" in rows["model/W"] and "(8, 4)" in rows["model/W"]
    assert "<f4" in rows["model/b"] and "(4,)" in rows["model/b"]
    assert table[-1].startswith("2 arrays")


def test_inspect_shows_a_snapshot_and_its_source(tmp_path: Any) -> None:
    dest = str(tmp_path / "snap.zip")
    save_snapshot({"x": np.zeros((2, 3))}, dest, {"note": "hi"}, source={"url": "s3://b/r", "step": 5})
    result = run("inspect", dest)
    assert result.returncode == 0, result.stderr
    assert "luigi-checkpoint/snapshot" in result.stdout
    assert "s3://b/r (step 5)" in result.stdout
    assert json.loads(run("inspect", dest, "--json").stdout)["metadata"] == {"note": "hi"}


def test_inspect_of_a_missing_file_is_a_one_line_error(tmp_path: Any) -> None:
    result = run("inspect", str(tmp_path / "nothing.zip"))
    assert_one_line_error(result, 1)
    assert "nothing.zip" in result.stderr


# -- verify -----------------------------------------------------------------


def test_verify_passes_a_good_store_and_reports_json(local_store: Store) -> None:
    result = local_store.ckpt("verify", local_store.url, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    reports = json.loads(result.stdout)
    assert [(r["step"], r["ok"], r["problems"]) for r in reports] == [(s, True, []) for s in STEPS]


def test_verify_fails_on_a_flipped_bit_in_a_store_but_passes_good_archives(store: Store) -> None:
    store.rewrite(200, flip_byte_of(helpers_snapshot.Model(seed=200).W))
    result = store.ckpt("verify", store.url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "3 checked, 1 bad"
    assert [line.split()[0] for line in lines[:3]] == ["ok", "BAD", "ok"]
    assert lines[1].endswith("step-000000000200.zip")
    assert "CRC" in lines[3] and "model/W" in lines[3]
    good = store.ckpt("verify", store.archive(300))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-1] == "1 checked, 0 bad"


def test_verify_checks_a_snapshot_against_its_checksums(tmp_path: Any) -> None:
    dest = tmp_path / "snap.zip"
    marker = np.full(100, 7, dtype=np.uint8)
    save_snapshot({"marker": marker}, str(dest))
    assert run("verify", str(dest)).returncode == 0
    data = dest.read_bytes()
    at = data.find(marker.tobytes())
    dest.write_bytes(data[:at] + b"\x08" + data[at + 1 :])
    result = run("verify", str(dest))
    assert result.returncode == 1
    assert "marker" in result.stdout


# -- audit ------------------------------------------------------------------


def test_audit_flags_untrusted_globals_without_unpickling(store: Store) -> None:
    result = store.ckpt("audit", store.archive(100))
    assert result.returncode == 1, result.stderr
    status = dict(line.split() for line in result.stdout.splitlines()[1:-1])
    assert status["tests.helpers_snapshot.Model"] == "UNTRUSTED"
    assert status["tests.helpers_snapshot._record_unpickling"] == "UNTRUSTED"
    assert all(v == "trusted" for k, v in status.items() if "helpers_snapshot" not in k)
    assert "2 untrusted" in result.stdout.splitlines()[-1]


def test_audit_with_trusted_names_passes(local_store: Store) -> None:
    store = local_store
    result = store.ckpt(
        "audit", store.archive(100), "--json",
        "--trust", "tests.helpers_snapshot.Model",
        "--trust", "tests.helpers_snapshot._record_unpickling",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["untrusted"] == []


# -- export -----------------------------------------------------------------


def test_export_of_a_root_takes_the_latest_good_step(store: Store) -> None:
    store.rewrite(300, lambda data: data[:100])
    dest = store.root.join("snap.zip")
    result = store.ckpt("export", store.url, dest)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {dest}: 2 arrays")
    assert result.stdout.rstrip().endswith("step-000000000200.zip")
    model = helpers_snapshot.Model(seed=200)
    got = load_snapshot(dest, storage_options=store.root.storage_options)
    np.testing.assert_array_equal(got["model/W"], model.W)
    np.testing.assert_array_equal(got["model/b"], model.b)


def test_export_selects_arrays_of_one_archive(local_store: Store, tmp_path: Any) -> None:
    dest = str(tmp_path / "snap.zip")
    result = local_store.ckpt("export", local_store.archive(100), dest, "--select", "*/b", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"]["step"] == 100
    got = load_snapshot(dest)
    assert list(got) == ["model/b"]
    np.testing.assert_array_equal(got["model/b"], helpers_snapshot.Model(seed=100).b)


def test_export_pattern_matching_nothing_is_a_one_line_error(
    local_store: Store, tmp_path: Any
) -> None:
    store = local_store
    result = store.ckpt("export", store.url, str(tmp_path / "s.zip"), "--select", "nope*")
    assert_one_line_error(result, 1)
    assert "'nope*'" in result.stderr
    assert not (tmp_path / "s.zip").exists()


# -- prune ------------------------------------------------------------------


def test_prune_dry_run_deletes_nothing(local_store: Store) -> None:
    dry = local_store.ckpt(
        "prune", local_store.url, "--keep-last", "1", "--keep-every", "200", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["would remove step 100", "would remove 1, kept 2: 200, 300"]
    assert CheckpointStore(local_store.url).steps() == list(STEPS)


def test_prune_keeps_the_newest(store: Store) -> None:
    result = store.ckpt("prune", store.url, "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"removed": [100, 200], "kept": [300], "damaged": [], "dry_run": False}
    checkpoints = CheckpointStore(store.url, storage_options=store.root.storage_options)
    assert checkpoints.steps() == [300]


# -- usage, errors, entry points --------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["prune", "x", "--keep-last", "0"],
        ["ls", "x", "--storage-option", "no-equals-sign"],
        ["ls", "x", "--storage-option", "a=1", "--storage-option", "a.b=2"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_garbage_archive_is_a_one_line_error_unless_debug(tmp_path: Any) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"garbage" * 100)
    assert_one_line_error(run("audit", str(junk)), 1)
    debug = run("audit", str(junk), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_s3_credentials_and_endpoint_from_the_environment(s3: S3Server) -> None:
    root = Root("s3", f"s3://{BUCKET}/env-run", s3.storage_options)
    CheckpointStore(root.url, storage_options=root.storage_options).save(1, {"x": np.zeros(2)})
    result = run("ls", root.url, env=s3.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "1"


def test_inspect_reads_a_snapshot_whose_time_ends_in_z(tmp_path: Any) -> None:
    """Snapshots written before 2026-12 end ``created`` in ``Z``, which
    ``datetime.fromisoformat`` refuses on Python 3.10."""
    new, old = tmp_path / "new.zip", tmp_path / "old.zip"
    save_snapshot({"w": np.arange(3)}, str(new))
    with zipfile.ZipFile(new) as zin, zipfile.ZipFile(old, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "manifest.json":
                data = json.dumps({**json.loads(data), "created": "2026-11-28T15:53:57Z"}).encode()
            zout.writestr(info.filename, data)
    done = run("inspect", str(old))
    assert done.returncode == 0, done.stderr
    assert "2026-11-28 15:53:57 UTC" in done.stdout
    np.testing.assert_array_equal(load_snapshot(str(old))["w"], np.arange(3))
