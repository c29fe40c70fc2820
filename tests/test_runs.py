"""Runs you can find, extend and follow: run records, ``list_runs``, ``ckpt runs``,
``total_steps`` raised on a finished run, the metric history through pruning and
crashes, ``ckpt history`` and ``ckpt plot``, best-k retention.

Real ``luigi.build`` runs of the demo's TrainMLP; S3 is the loopback moto server.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pytest

from luigi_checkpoint.pipeline.mlp import TrainMLP
from luigi_checkpoint.storage import list_runs
from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.plot import PNG_SIZE
from luigi_checkpoint.storage.runs import read_run_record

from .conftest import Root, make_root
from .helpers_luigi import BASE, ForkedBuild, resumed_step, wait_for, write_cfg
from .test_cli import cli_options, run

PARAMS = {"hidden": "16", "samples": 256, "features": 8, "batch_size": 16, "seed": 5, "checkpoint_every": 20}


def train(root: Root, **params: Any) -> TrainMLP:
    task = TrainMLP(checkpoint_root=root.url, storage_options=root.storage_options, **{**PARAMS, **params})
    assert luigi.build([task], local_scheduler=True)
    return task


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    return make_root(request.param, tmp_path, request)


def test_two_runs_are_listed_with_the_parameter_that_differs(place: Root) -> None:
    slow = train(place, total_steps=40, learning_rate=0.01)
    fast = train(place, total_steps=40, learning_rate=0.2)

    runs = list_runs(place.url, place.storage_options)
    assert [(r.run_id, r.parameters["learning_rate"]) for r in runs] == [
        (slow.run_id(), "0.01"), (fast.run_id(), "0.2")
    ]
    assert {r.state for r in runs} == {"done"}
    assert [(r.latest_step, r.total_steps) for r in runs] == [(40, 40), (40, 40)]
    assert runs[0].metrics == dict(slow.checkpoint_store().info(40).metadata["metrics"])

    result = run("runs", place.url, *cli_options(place.storage_options))
    assert result.returncode == 0, result.stderr
    header, first, second, common = result.stdout.splitlines()
    assert header.split() == ["RUN", "LEARNING_RATE", "STEP", "STATE", "AGE", "METRICS"]
    assert first.split()[:4] == [f"TrainMLP/{slow.run_id()}", "0.01", "40/40", "done"]
    assert second.split()[:4] == [f"TrainMLP/{fast.run_id()}", "0.2", "40/40", "done"]
    assert "hidden=16" in common and "learning_rate" not in common

    as_json = json.loads(run("runs", place.url, "--json", *cli_options(place.storage_options)).stdout)
    assert [r["parameters"] for r in as_json] == [dict(r.parameters) for r in runs]


def test_the_run_record_holds_every_parameter_and_the_config_file(tmp_path: Path) -> None:
    root = Root("local", str(tmp_path / "runs"))
    task = train(root, total_steps=20, step_delay=0.0)
    record = read_run_record(task.checkpoint_store().root)
    assert record is not None
    assert record["family"] == "TrainMLP" and record["run_id"] == task.run_id()
    assert record["parameters"] == task.to_str_params(only_public=True)
    assert "step_delay" in record["parameters"] and "storage_options" not in record["parameters"]
    assert record["total_steps"] == 20 and record["library_version"]


def test_ls_of_a_family_folder_points_to_ckpt_runs(tmp_path: Path) -> None:
    root = Root("local", str(tmp_path / "runs"))
    train(root, total_steps=20)
    result = run("ls", root.join("TrainMLP"))
    assert result.returncode == 1
    assert "1 run(s) below it: ckpt runs" in result.stderr


def run_forked(tmp_path: Path, name: str, **params: Any) -> ForkedBuild:
    build = ForkedBuild.start(
        TrainMLP, {**PARAMS, "checkpoint_root": str(tmp_path / "runs"), **params},
        cfg=write_cfg(tmp_path / "luigi.cfg", BASE), log=tmp_path / f"{name}.log",
    )
    build.wait()
    return build


def test_raising_total_steps_extends_the_run_and_lowering_it_is_an_error(tmp_path: Path) -> None:
    first = run_forked(tmp_path, "first", total_steps=300, checkpoint_every=100)
    assert first.process.exitcode == 0, first.output()
    # The local scheduler's console shows progress: at every checkpoint and every status_seconds.
    progress = re.findall(
        r"TrainMLP \w+: step (\d+)/300 \(([\d.]+)%\), [\d.e+]+ steps/s, ETA \d+[smhd], "
        r"loss=\S+, accuracy=\S+, (?:checkpoint (\d+) \d+[smhd] ago|no checkpoint yet)",
        first.output(),
    )
    assert [(step, saved) for step, _, saved in progress if saved] == [("100", "100"), ("200", "200"), ("300", "300")]
    assert [float(share) for step, share, saved in progress if saved] == [33.3, 66.7, 100.0]

    second = run_forked(tmp_path, "second", total_steps=500, checkpoint_every=100)
    assert second.process.exitcode == 0, second.output()
    task = TrainMLP(checkpoint_root=str(tmp_path / "runs"), total_steps=500, **PARAMS)
    assert f"resumed from step 300 of 500, {task.checkpoint_store().url_of(300)}" in second.output()
    assert task.run_id() == TrainMLP(checkpoint_root=str(tmp_path / "runs"), total_steps=300, **PARAMS).run_id()
    [only] = list_runs(tmp_path / "runs")
    assert (only.url, only.latest_step, only.total_steps, only.state) == (task.checkpoint_store().root_url, 500, 500, "done")

    lowered = run_forked(tmp_path, "lowered", total_steps=450)  # no archive of step 450: it runs
    assert lowered.process.exitcode == 1
    assert "TotalStepsError" in lowered.output()
    assert "total_steps=450 is below the newest checkpoint, step 500" in lowered.output()
    assert task.checkpoint_store().steps()[-1] == 500


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_history_keeps_every_step_through_pruning_and_plots_it(tmp_path: Path) -> None:
    root = Root("local", str(tmp_path / "runs"))
    task = train(root, total_steps=100, keep_last=2)
    store = task.checkpoint_store()
    assert store.steps() == [80, 100]

    history = store.history()
    assert history.steps == tuple(range(1, 101))
    assert history.names() == ["loss", "accuracy"]
    assert history.metrics[-1] == store.info(100).metadata["metrics"]
    assert history.metrics[79] == store.info(80).metadata["metrics"]

    result = run("history", store.root_url, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["step"] for r in rows] == list(range(1, 101))
    assert [r["metrics"] for r in rows] == [dict(m) for m in history.metrics]
    table = run("history", store.root_url, "--metric", "loss").stdout.splitlines()
    assert table[0].split() == ["STEP", "loss"] and len(table) == 101
    assert float(table[20].split()[1]) == pytest.approx(history.metrics[19]["loss"], rel=1e-5)

    png = tmp_path / "loss.png"
    result = run("plot", store.root_url, "--metric", "loss", "-o", str(png))
    assert result.returncode == 0, result.stderr
    assert png_size(png) == PNG_SIZE
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (PNG_SIZE[1], PNG_SIZE[0])
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # a drawing, not a blank

    spark = run("plot", store.root_url, "--metric", "loss", "--width", "20")
    summary, line = spark.stdout.splitlines()
    assert summary.startswith("loss  steps 1..100") and len(line) == 20
    assert set(line) <= set("▁▂▃▄▅▆▇█") and line[0] == "█"  # the loss starts at its highest


def test_history_after_a_crash_is_that_of_an_uninterrupted_run(tmp_path: Path) -> None:
    crashed = run_forked(tmp_path, "crash", total_steps=100, fail_at_step=55)
    assert crashed.process.exitcode == 1
    resumed = run_forked(tmp_path, "resume", total_steps=100)
    assert resumed_step(resumed.output()) == 40
    store = TrainMLP(checkpoint_root=str(tmp_path / "runs"), total_steps=100, **PARAMS).checkpoint_store()

    reference = train(Root("local", str(tmp_path / "reference")), total_steps=100, checkpoint_every=0,
                      checkpoint_seconds=0)
    assert store.history() .steps == tuple(range(1, 101))
    assert store.history().metrics == reference.checkpoint_store().history().metrics


def test_keep_best_keeps_the_lowest_losses_and_the_newest(tmp_path: Path) -> None:
    root = Root("local", str(tmp_path / "runs"))
    task = train(root, total_steps=200, checkpoint_every=10, keep_last=1, keep_best=2, monitor="loss")
    store = task.checkpoint_store()
    history = store.history()
    losses = {step: m["loss"] for step, m in zip(history.steps, history.metrics) if step % 10 == 0}
    lowest = sorted(losses, key=losses.get)[:2]
    assert 200 not in lowest  # else the test shows less
    assert store.steps() == sorted([*lowest, 200])
    assert store.best_step() == lowest[0]
    step, state = store.restore(best=True)
    assert step == lowest[0]
    assert isinstance(state["weights"][0], np.ndarray)


def test_ckpt_prune_keep_best(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=None)
    losses = {10: 0.5, 20: 0.2, 30: 0.9, 40: 0.1, 50: 0.7}
    for step, loss in losses.items():
        store.save(step, {"w": np.full(3, step)}, {"metrics": {"loss": loss}})
    result = run("prune", store.root_url, "--keep-best", "2", "--monitor", "loss")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "removed 2, kept 3: 20, 40, 50"
    assert store.steps() == [20, 40, 50]
    maximizing = run("prune", store.root_url, "--keep-best", "1", "--monitor", "loss", "--mode", "max",
                     "--dry-run")
    assert maximizing.stdout.splitlines()[-1] == "would remove 2, kept 1: 50"


def test_a_running_run_is_running_and_turns_stale_when_killed(tmp_path: Path) -> None:
    params = {**PARAMS, "checkpoint_root": str(tmp_path / "runs"), "total_steps": 100_000, "checkpoint_every": 0,
              "checkpoint_seconds": 0.2, "status_seconds": 0.1, "step_delay": 0.01}
    build = ForkedBuild.start(TrainMLP, params, cfg=write_cfg(tmp_path / "luigi.cfg", BASE), log=tmp_path / "run.log")

    def state() -> str | None:
        runs = list_runs(tmp_path / "runs")
        return runs[0].state if runs and runs[0].latest_step is not None else None

    wait_for(lambda: state() == "running", what="the run to be listed as running with a checkpoint")
    build.kill()
    wait_for(lambda: state() == "stale", what="the killed run to turn stale")
    [stale] = list_runs(tmp_path / "runs")
    assert stale.latest_step is not None and stale.latest_step < 100_000
    result = run("runs", str(tmp_path / "runs"))
    assert result.stdout.splitlines()[1].split()[2] == "stale"


def test_history_segments_merge_in_write_order_on_every_storage(root: Root) -> None:
    from luigi_checkpoint.storage.fs import resolve
    from luigi_checkpoint.storage.history import read_history, read_latest, write_history

    run = resolve(root.url, root.storage_options)
    write_history(run, [(1, {"loss": 1.0}), (2, {"loss": 0.9}), (3, {"loss": 0.8})])
    write_history(run, [(4, {"loss": 0.7}), (5, {"loss": 0.6})])  # then the attempt crashed at 5
    write_history(run, [(4, {"loss": 0.75}), (5, {"loss": 0.65}), (6, {"loss": 0.5, "acc": 0.9})])  # the rerun
    history = read_history(run)
    assert history.steps == (1, 2, 3, 4, 5, 6)
    assert history.series("loss") == ([1, 2, 3, 4, 5, 6], [1.0, 0.9, 0.8, 0.75, 0.65, 0.5])
    assert history.names() == ["loss", "acc"] and history.series("acc") == ([6], [0.9])
    step, metrics, _ = read_latest(run)
    assert (step, metrics) == (6, {"loss": 0.5, "acc": 0.9})
    assert read_history(run.child("nothing")).steps == () and read_latest(run.child("nothing")) is None
