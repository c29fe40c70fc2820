"""TrainingTask: resume after kill -9, preemption signals, Luigi retries, progress.

Real Luigi runs: ``luigi.build`` in-process, the ``luigi`` command in
subprocesses, a real ``luigid``; S3 is the loopback moto server.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from luigi_checkpoint.pipeline.config import luigi_config
from luigi_checkpoint.pipeline.mlp import TrainMLP
from luigi_checkpoint.storage.errors import UntrustedTypeError
from luigi_checkpoint.storage.fs import is_temp_name
from tests.conftest import BUCKET
from tests.helpers_luigi import (
    FAST_RETRIES,
    BASE,
    CountingTask,
    Counter,
    ForkedBuild,
    REPO,
    LuigiProcess,
    SlowTrainMLP,
    assert_same_state,
    has_started,
    resumed_step,
    run_luigi,
    wait_for,
    write_cfg,
)

# A state of about 2.4 MB (weights and velocities) with cheap steps (batches
# of 2): saving dominates, so kills often land inside a checkpoint write.
KILL_PARAMS = {"total_steps": 100, "hidden": "384,384", "samples": 256, "features": 8, "batch_size": 2, "seed": 3}
SMALL_PARAMS = {"total_steps": 120, "hidden": "16", "samples": 256, "features": 8, "batch_size": 16, "seed": 5}


def reference_state(tmp_path: Path, params: dict[str, Any]) -> Any:
    """Final state of an uninterrupted in-process run with only the final save."""
    params = {k: v for k, v in params.items() if k in TrainMLP.get_param_names(include_significant=True)}
    params.update(checkpoint_every=0, checkpoint_seconds=0)
    task = TrainMLP(checkpoint_root=str(tmp_path / "reference"), **params)
    assert luigi.build([task], local_scheduler=True)
    return task.output().load()


def final_state(task: TrainMLP) -> Any:
    step, state = task.checkpoint_store().restore()
    assert step == task.total_steps
    return state


def assert_resumed_from_newest(output: str, before: int | None, kind: str) -> None:
    """The attempt resumed from the newest checkpoint there was when it started.

    ``before`` is the newest step seen once the previous attempt was dead. On
    local disk that is final: a killed process renames nothing. An S3 server
    may still finish a request the dead worker had sent in full (SeaweedFS
    completes an upload after its client is gone), so there the checkpoint of
    the next step can appear afterwards, and the attempt rightly resumes from
    it; saves are synchronous in the S3 attempts, so at most one is in flight.
    """
    allowed = {before} if kind == "local" else {before, (before or 0) + 1}
    assert resumed_step(output) in allowed, output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_kill_9_at_random_moments_resumes_from_newest_checkpoint_bit_exact(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rnd = random.Random(20261128)
    if kind == "local":
        root, env, options = str(tmp_path / "runs"), {}, {}
        cfg = write_cfg(tmp_path / "luigi.cfg", {"checkpoint": {"root": root}}, BASE)
    else:  # the shipped S3 config, endpoint and credentials from the environment
        s3 = request.getfixturevalue("s3")
        root, options = f"s3://{BUCKET}/runs", s3.storage_options
        env = {**s3.env, "LUIGI_CHECKPOINT_BUCKET": BUCKET}
        cfg = REPO / "configs" / "luigi-s3.cfg"
    # A step takes at least 20 ms, so an attempt killed within about 0.3 s of its
    # first checkpoint cannot run to the end; an attempt that still does (a
    # stalled test process) ends the kills, as the last attempt would have.
    attempt_params = {**KILL_PARAMS, "checkpoint_every": 1, "async_save": kind == "local", "step_delay": 0.02}
    # Cadence is not significant: the last attempt resumes the same run, saving only the end.
    last_params = {**KILL_PARAMS, "checkpoint_every": 0}
    task = TrainMLP(checkpoint_root=root, storage_options=options, **KILL_PARAMS)
    store = task.checkpoint_store()

    def saved_since_start(child: ForkedBuild) -> bool:
        # Progress of this attempt, not the late arrival of a dead one's upload.
        output = child.output()
        return has_started(output) and max(store.steps(), default=0) > (resumed_step(output) or 0)

    kills = kills_while_writing = 0
    finished = False
    while kills < 10 and not finished:
        before = store.latest_step()
        child = ForkedBuild.start(TrainMLP, attempt_params, cfg=cfg, log=tmp_path / f"attempt-{kills}.log", env=env)
        wait_for(lambda: not child.alive() or saved_since_start(child), interval=0.05, what="training to progress")
        if kind == "local" and kills % 2 == 0:
            wait_for(lambda: not child.alive() or any(is_temp_name(n) for n in os.listdir(task.run_url())),
                     interval=0.001)
        else:
            threading.Event().wait(rnd.uniform(0.0, 0.2))
        if child.alive():
            child.kill()
        finished = child.wait() == 0
        assert_resumed_from_newest(child.output(), before, kind)
        if kind == "local" and not finished:
            kills_while_writing += any(is_temp_name(n) for n in os.listdir(task.run_url()))
        kills += not finished

    if not finished:
        before = store.latest_step()
        last = ForkedBuild.start(TrainMLP, last_params, cfg=cfg, log=tmp_path / "last.log", env=env)
        assert last.wait() == 0, last.output()
        assert_resumed_from_newest(last.output(), before, kind)
    assert kills >= 1
    if kind == "local":
        assert kills_while_writing >= 1
    assert_same_state(final_state(task), reference_state(tmp_path, KILL_PARAMS))


def _child_pid(pid: int) -> int | None:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else None


@pytest.mark.parametrize("mode", ["in-process", "forked"])
def test_sigterm_saves_the_current_step_fails_and_the_rerun_resumes_there(mode: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    worker = {"worker": {"force_multiprocessing": "true"}} if mode == "forked" else {}
    cfg = write_cfg(tmp_path / "luigi.cfg", {"checkpoint": {"root": root}}, FAST_RETRIES, BASE, worker)
    params = {**SMALL_PARAMS, "total_steps": 150, "checkpoint_every": 0, "checkpoint_seconds": 0, "step_seconds": 0.005}
    proc = LuigiProcess.start("SlowTrainMLP", params, cfg=cfg, log=tmp_path / "first.log")
    wait_for(lambda: "starting at step 0 of 150" in proc.output(), what="training to start")
    target = _child_pid(proc.process.pid) if mode == "forked" else proc.process.pid
    assert target is not None
    threading.Event().wait(0.2)
    os.kill(target, signal.SIGTERM)

    assert proc.wait() == 30, proc.output()
    match = re.search(r"interrupted by SIGTERM after step (\d+)/150; saved checkpoint (\S+), a retry", proc.output())
    assert match, proc.output()
    step = int(match.group(1))
    task = SlowTrainMLP(checkpoint_root=str(root), **params)
    assert task.checkpoint_store().steps() == [step]
    assert match.group(2) == task.checkpoint_store().url_of(step)
    assert 0 < step < 150

    code, output = run_luigi("SlowTrainMLP", params, cfg=cfg, log=tmp_path / "second.log")
    assert code == 0, output
    assert resumed_step(output) == step
    assert_same_state(final_state(task), reference_state(tmp_path, params))


def test_sigint_in_process_saves_fails_and_restores_the_previous_handlers(tmp_path: Path) -> None:
    params = {**SMALL_PARAMS, "total_steps": 150, "checkpoint_every": 0, "checkpoint_seconds": 0, "step_seconds": 0.005}
    task = SlowTrainMLP(checkpoint_root=str(tmp_path / "runs"), **params)
    before = signal.getsignal(signal.SIGINT)

    def interrupt_once_training() -> None:
        def installed() -> bool:
            return signal.getsignal(signal.SIGINT) is not before

        wait_for(installed, what="the task's handler")
        threading.Event().wait(0.2)
        assert installed(), "training ended before the interrupt"
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.FAILED
    assert signal.getsignal(signal.SIGINT) is before
    [step] = task.checkpoint_store().steps()
    assert 0 < step < 150
    restored_step, _ = task.checkpoint_store().restore()
    assert restored_step == step

    assert luigi.build([task], local_scheduler=True)
    assert_same_state(final_state(task), reference_state(tmp_path, params))


def test_a_failing_step_is_retried_in_one_invocation_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="luigi-interface.checkpoint")
    cfg = write_cfg(tmp_path / "luigi.cfg", FAST_RETRIES)
    task = TrainMLP(checkpoint_root=str(tmp_path / "runs"), checkpoint_every=40, fail_at_step=90, **SMALL_PARAMS)
    with luigi_config(cfg):
        result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.SUCCESS_WITH_RETRY
    assert "simulated crash at step 90" in caplog.text
    assert f"resumed from step 80 of 120, {task.checkpoint_store().url_of(80)}" in caplog.text
    assert_same_state(final_state(task), reference_state(tmp_path, SMALL_PARAMS))


def test_an_exception_in_a_step_saves_nothing_and_keeps_the_checkpoints(tmp_path: Path) -> None:
    task = TrainMLP(checkpoint_root=str(tmp_path / "runs"), checkpoint_every=30, fail_at_step=70, **SMALL_PARAMS)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.FAILED
    assert task.checkpoint_store().steps() == [30, 60]
    assert not task.complete()


def test_the_final_step_is_the_output_and_is_written_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="luigi-interface.checkpoint")
    task = TrainMLP(checkpoint_root=str(tmp_path / "runs"), checkpoint_every=40, keep_last=10, **SMALL_PARAMS)
    assert luigi.build([task], local_scheduler=True)
    store = task.checkpoint_store()
    assert store.steps() == [40, 80, 120]
    assert task.output().path == store.url_of(120)
    info = store.info(120)
    assert info.metadata["total_steps"] == 120
    assert set(info.metadata["metrics"]) == {"loss", "accuracy"}
    assert luigi.build([task], local_scheduler=True)
    assert store.info(120).created == info.created
    assert not [r for r in caplog.records if r.name == "luigi-interface.checkpoint" and r.levelno >= logging.WARNING]


def test_the_run_folder_depends_only_on_significant_parameters() -> None:
    base = TrainMLP(checkpoint_root="somewhere", **SMALL_PARAMS)
    cadence = TrainMLP(
        checkpoint_root="somewhere", checkpoint_every=7, checkpoint_seconds=1.0, keep_last=1, keep_every=10,
        async_save=True, fail_at_step=3, **SMALL_PARAMS,
    )
    moved = TrainMLP(checkpoint_root=f"s3://{BUCKET}/elsewhere", **SMALL_PARAMS)
    other = TrainMLP(checkpoint_root="somewhere", **{**SMALL_PARAMS, "seed": 6})
    assert re.fullmatch(r"somewhere/TrainMLP/[0-9a-f]{10}", base.run_url())
    assert cadence.run_url() == base.run_url()
    assert moved.run_url() == f"s3://{BUCKET}/elsewhere/TrainMLP/{base.run_id()}"
    assert other.run_id() != base.run_id()


def test_checkpoint_root_and_cadence_come_from_luigi_cfg(tmp_path: Path) -> None:
    cfg = write_cfg(
        tmp_path / "luigi.cfg",
        {"checkpoint": {"root": tmp_path / "cfg-runs"}, "TrainMLP": {"checkpoint_every": 25, "keep_last": 2}},
    )
    with luigi_config(cfg):
        task = TrainMLP(**SMALL_PARAMS)
        assert task.root_url() == str(tmp_path / "cfg-runs")
        assert (task.checkpoint_every, task.keep_last) == (25, 2)
        assert luigi.build([task], local_scheduler=True)
        assert task.checkpoint_store().steps() == [100, 120]
    assert TrainMLP(**SMALL_PARAMS).root_url() == "./runs"


def test_a_state_of_user_classes_resumes_only_with_trusted_types(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    untrusting = CountingTask(checkpoint_root=root, total_steps=4, trust=False)
    untrusting.checkpoint_store().save(2, Counter(np.full(3, 3.0), steps=2))
    result = luigi.build([untrusting], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.FAILED
    assert untrusting.checkpoint_store().steps() == [2]
    with pytest.raises(UntrustedTypeError, match="helpers_luigi.Counter"):
        untrusting.checkpoint_store().restore()

    trusting = CountingTask(checkpoint_root=root, total_steps=4, trust=True)
    assert trusting.run_url() == untrusting.run_url()
    assert luigi.build([trusting], local_scheduler=True)
    final = trusting.output().load(trusted=[Counter])
    assert final.steps == 4
    assert np.array_equal(final.value, np.full(3, 3.0 + 3 + 4))


def test_progress_and_status_messages_reach_the_scheduler(luigid: Any, s3: Any, tmp_path: Path) -> None:
    # The shipped cluster config: luigid host and the S3 bucket from the environment.
    env = {**s3.env, "LUIGI_SCHEDULER_HOST": "127.0.0.1", "LUIGI_CHECKPOINT_BUCKET": BUCKET}
    params = {**SMALL_PARAMS, "total_steps": 200, "checkpoint_every": 40, "status_seconds": 0.1, "step_seconds": 0.01}
    proc = LuigiProcess.start(
        "SlowTrainMLP", params, cfg=REPO / "configs" / "luigi-cluster.cfg", log=tmp_path / "worker.log",
        env=env, extra=("--scheduler-port", str(luigid.port)),
    )
    # The checkpoint's age and the run folder (from the config) first: the part a narrow column shows.
    run_folder = f"s3://{BUCKET}/runs/SlowTrainMLP/{SlowTrainMLP(**params).run_id()}"
    message = re.compile(
        rf"checkpoint (?P<saved>\d+) \d+s ago, {re.escape(run_folder)}, "
        r"step (?P<step>\d+)/200, loss=[\d.e+-]+, accuracy=[\d.e+-]+"
    )

    def running_with_checkpoint() -> list[dict[str, Any]]:
        tasks = luigid.task_list(status="RUNNING").values()
        return [t for t in tasks if message.fullmatch(t.get("status_message") or "")]

    [running] = wait_for(running_with_checkpoint, interval=0.05, what="a status message with a checkpoint")
    found = message.fullmatch(running["status_message"])
    step, saved = int(found["step"]), int(found["saved"])
    assert saved % 40 == 0 and saved <= step < 200
    assert 0 < running["progress_percentage"] < 100
    assert proc.wait() == 0, proc.output()
    [done] = luigid.task_list(status="DONE").values()
    assert done["progress_percentage"] == 100
    assert message.fullmatch(done["status_message"]).group("saved", "step") == ("200", "200")
