"""The torch TrainingTask example: killed with SIGKILL at random moments and
rerun with the ``luigi`` command, it ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pytest
import torch

from luigi_checkpoint.pipeline.torch_mlp import TrainTorchMLP
from luigi_checkpoint.storage.archive import read_arrays
from tests.helpers_luigi import BASE, LuigiProcess, resumed_step, wait_for, write_cfg

PARAMS = {"total_steps": 150, "hidden": 48, "samples": 512, "features": 12, "batch_size": 16, "seed": 7}
MODULE = "luigi_checkpoint.pipeline.torch_mlp"


def tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor, generator state and plain value of a state, by path."""
    if isinstance(state, dict):
        found: dict[str, Any] = {}
        for key, value in state.items():
            found.update(tensors(value, f"{prefix}/{key}"))
        return found
    if isinstance(state, (list, tuple)):
        return tensors(dict(enumerate(state)), prefix)
    if isinstance(state, torch.Generator):
        return {prefix: state.get_state()}
    return {prefix: state}


def assert_bit_identical(actual: Any, expected: Any) -> None:
    a, b = tensors(actual), tensors(expected)
    assert a.keys() == b.keys()
    for key, value in b.items():
        if isinstance(value, torch.Tensor):
            assert a[key].dtype == value.dtype and a[key].shape == value.shape, key
            assert torch.equal(a[key], value), key
        else:
            assert a[key] == value, key


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path: Path) -> None:
    rnd = random.Random(20261204)
    root = str(tmp_path / "runs")
    cfg = write_cfg(tmp_path / "luigi.cfg", {"checkpoint": {"root": root}}, BASE)
    task = TrainTorchMLP(checkpoint_root=root, **PARAMS)
    store = task.checkpoint_store()
    attempt = {**PARAMS, "checkpoint_every": 2, "step_delay": 0.02}

    kills, finished = 0, False
    while kills < 6 and not finished:
        before = store.latest_step()
        child = LuigiProcess.start("TrainTorchMLP", attempt, cfg=cfg, log=tmp_path / f"attempt-{kills}.log",
                                   module=MODULE)
        wait_for(lambda: child.process.poll() is not None or (store.latest_step() or 0) > (before or 0),
                 timeout=120, interval=0.02, what="training to progress")
        threading.Event().wait(rnd.uniform(0.0, 0.3))
        finished = child.process.poll() == 0
        if not finished:
            assert child.kill(9) == -9
        assert resumed_step(child.output()) == before, child.output()
        kills += not finished
    if not finished:
        before = store.latest_step()
        last = LuigiProcess.start("TrainTorchMLP", {**PARAMS, "checkpoint_every": 0}, cfg=cfg,
                                  log=tmp_path / "last.log", module=MODULE)
        assert last.wait() == 0, last.output()
        assert resumed_step(last.output()) == before
    assert kills >= 1

    reference = TrainTorchMLP(checkpoint_root=str(tmp_path / "reference"), checkpoint_every=0,
                              checkpoint_seconds=0, **PARAMS)
    assert luigi.build([reference], local_scheduler=True)
    assert_bit_identical(task.output().load(), reference.output().load())


def test_numpy_reads_every_weight_of_the_example_by_name(tmp_path: Path) -> None:
    task = TrainTorchMLP(checkpoint_root=str(tmp_path), total_steps=3, checkpoint_every=0,
                         **{k: v for k, v in PARAMS.items() if k != "total_steps"})
    assert luigi.build([task], local_scheduler=True)
    with np.load(task.output().path) as members:
        names = set(members.files)
    assert {"model/0_weight", "model/3_bias", "optimizer/state/0/exp_avg", "optimizer/state/3/exp_avg_sq",
            "data_rng", "torch_rng"} <= names
    state = task.output().load()
    arrays = read_arrays(task.output().path)
    assert np.array_equal(arrays["model/0_weight"], state["model"]["0.weight"].numpy())
