"""A run's good checkpoints are never lost, whatever changed between the crash
and the rerun: an archive whose bytes are good but whose state this code cannot
build is unloadable, never skipped, pruned or restarted over."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.errors import ArchiveError, UnloadableArchiveError, UntrustedTypeError
from luigi_checkpoint.tasks.training import TrainingTask

from .helpers_luigi import CountingTask

CODE = {"crash_at": None, "needs_learning_rate": False}
"""What the "user code" below does now; a test changes it between runs."""


class Model:
    """A trusted user class whose ``__setstate__`` a later version makes stricter."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def __setstate__(self, state: dict[str, Any]) -> None:
        if CODE["needs_learning_rate"]:
            state["scaled"] = state["weights"] * state["learning_rate"]  # KeyError on old archives
        self.__dict__.update(state)


class ModelTask(TrainingTask):
    checkpoint_every = luigi.IntParameter(default=2, significant=False)
    trusted_types = (Model,)

    def init_state(self) -> Model:
        # docstring inherited
        return Model(np.zeros(4))

    def train_step(self, state: Model, step: int) -> dict[str, float]:
        # docstring inherited
        if step == CODE["crash_at"]:
            raise RuntimeError(f"crash at step {step}")
        state.weights += step
        return {"sum": float(state.weights.sum())}


@pytest.fixture(autouse=True)
def _original_code() -> Any:
    yield
    CODE.update(crash_at=None, needs_learning_rate=False)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_rerun_whose_class_no_longer_loads_fails_and_keeps_every_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = ModelTask(checkpoint_root=str(tmp_path / "runs"), total_steps=10, keep_last=2)
    CODE["crash_at"] = 7
    assert luigi.build([task], local_scheduler=True, detailed_summary=True).status == LuigiStatusCode.FAILED
    store = task.checkpoint_store()
    assert store.steps() == [4, 6]
    before = _digests(Path(task.run_url()))

    CODE.update(crash_at=None, needs_learning_rate=True)  # the code changed before the rerun
    with caplog.at_level(logging.ERROR):
        result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.FAILED
    assert "UnloadableArchiveError" in caplog.text
    assert "cannot build tests.test_resume_safety.Model: KeyError: 'learning_rate'" in caplog.text
    assert "step-000000000006.zip" in caplog.text
    assert _digests(Path(task.run_url())) == before  # nothing pruned, rewritten or added
    with pytest.raises(UnloadableArchiveError, match="cannot resume.*checkpoint"):
        task.run()
    assert _digests(Path(task.run_url())) == before

    CODE["needs_learning_rate"] = False  # the fix: the run resumes where it stopped
    assert luigi.build([task], local_scheduler=True)
    assert store.restore(trusted=[Model])[1].weights.tolist() == [55.0] * 4


def test_restore_never_falls_back_past_an_unloadable_archive(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "run"), keep_last=1)
    store.save(1, {"plain": np.arange(3)})
    CheckpointStore(str(tmp_path / "run"), keep_last=None).save(2, Model(np.ones(2)))
    CODE["needs_learning_rate"] = True
    with pytest.raises(UnloadableArchiveError, match="Model: KeyError"):
        store.restore(trusted=[Model])
    assert store.latest_step() == 2  # the cheap check does not unpickle: the archive is good
    assert store.prune() == [1]  # retention keeps the newest good archive, the unloadable one
    assert store.steps() == [2]


def test_a_newer_format_is_unloadable_not_damaged(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "run"), keep_last=None)
    store.save(1, {"w": np.arange(3)})
    store.save(2, {"w": np.arange(4)})
    newest = Path(store.url_of(2))
    with zipfile.ZipFile(newest) as old:
        members = {info.filename: old.read(info) for info in old.infolist()}
    manifest = json.loads(members["manifest.json"])
    members["manifest.json"] = json.dumps({**manifest, "format_version": 99}).encode()
    with zipfile.ZipFile(newest, "w") as new:
        for name, data in members.items():
            new.writestr(name, data)
    with pytest.raises(UnloadableArchiveError, match="format version 99 is newer"):
        store.restore()
    with pytest.raises(UnloadableArchiveError):
        store.latest_step()
    assert not isinstance(UnloadableArchiveError("x"), ArchiveError)
    assert store.steps() == [1, 2]


def test_a_state_resume_would_refuse_fails_at_the_first_checkpoint(tmp_path: Path) -> None:
    task = CountingTask(checkpoint_root=str(tmp_path / "runs"), total_steps=6, trust=False)
    expected = r"refusing to save .*helpers_luigi\.Counter.*CountingTask\.trusted_types.*strings"
    with pytest.raises(UntrustedTypeError, match=expected):
        task.run()
    assert task.checkpoint_store().steps() == []
    assert luigi.build([task], local_scheduler=True, detailed_summary=True).status == LuigiStatusCode.FAILED
    assert task.checkpoint_store().steps() == []
