"""An archive is opened once for what one call needs of it (on S3 every open
costs a HEAD and a read of the archive's tail): counted on the real filesystem."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage import cli
from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.snapshot import load_snapshot

from .conftest import Root
from .test_cli import cli_options


@pytest.fixture
def store(root: Root) -> CheckpointStore:
    store = CheckpointStore(root.join("run"), keep_last=None, storage_options=root.storage_options)
    for step in (1, 2, 3):
        store.save(step, {"w": np.full(4, float(step)), "step": step})
    return store


@pytest.fixture
def opened(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Paths opened on the store's filesystem from now on (opens pass through)."""
    fs = store.root.fs
    paths: list[str] = []
    real_open = fs.open

    def counting_open(path: str, *args: Any, **kwargs: Any) -> Any:
        paths.append(fs._strip_protocol(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(fs, "open", counting_open)
    yield paths


def test_restore_of_the_newest_step_opens_its_archive_once(store: CheckpointStore, opened: list[str]) -> None:
    step, state = store.restore()
    assert step == 3 and state["step"] == 3
    assert opened == [store.location_of(3).path]


def test_restore_of_a_given_step_opens_its_archive_once(store: CheckpointStore, opened: list[str]) -> None:
    step, state = store.restore(1)
    np.testing.assert_array_equal(state["w"], np.full(4, 1.0))
    assert opened == [store.location_of(1).path]


def test_info_opens_the_archive_once_and_reports_its_size(store: CheckpointStore, opened: list[str]) -> None:
    info = store.info(2)
    assert opened == [store.location_of(2).path]
    assert info.size == store.root.fs.size(store.location_of(2).path)


def test_ckpt_export_of_a_run_opens_the_source_archive_once(
    root: Root, store: CheckpointStore, opened: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    dest = root.join("exports", "snapshot.zip")
    status = cli.main(["export", store.root_url, dest, "--parents", *cli_options(root.storage_options)])
    assert status == 0, capsys.readouterr().err
    assert opened.count(store.location_of(3).path) == 1
    snapshot = load_snapshot(dest, storage_options=root.storage_options)
    np.testing.assert_array_equal(snapshot["w"], np.full(4, 3.0))
