"""Many workers, one central scheduler, S3 checkpoints: a real ``luigid`` and
``luigi`` worker processes on 127.0.0.1, the loopback moto S3 server.

The workers run ``luigi --module luigi_checkpoint.pipeline.mlp Sweep`` with a config derived
from ``configs/luigi-cluster.cfg`` (scheduler port and short timings changed);
``luigid`` runs with that file's ``[scheduler]`` section, timings shortened.
"""

from __future__ import annotations

import datetime
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import luigi
import pytest
from luigi.cmdline_parser import CmdlineParser

from luigi_checkpoint.pipeline.mlp import Sweep
from tests.conftest import BUCKET, Luigid
from tests.helpers_distributed import (
    WorkerProcess,
    cli_args,
    cluster_config,
    reference_runs,
    run_id_of,
    training_entries,
    worker_pid,
)
from tests.helpers_luigi import assert_same_state, wait_for

TOTAL = 80
EVERY = 10
# Four small runs of about 4 s each (the sleep costs no CPU), every checkpoint kept.
SWEEP = {
    "date": "2026-11-28", "learning_rates": [0.05, 0.1], "seeds": [1, 2], "hiddens": ["16"],
    "total_steps": TOTAL, "checkpoint_every": EVERY, "keep_last": 100, "status_seconds": 0.2,
    "samples": 256, "features": 8, "batch_size": 16, "step_delay": 0.05,
}
TWO_RUNS = {**SWEEP, "seeds": [1]}
SCHEDULER = {"retry_delay": 1, "worker_disconnect_delay": 8}
WORKER = {"wait_interval": 0.2, "wait_jitter": 0.2, "ping_interval": 1}
STATUS = re.compile(rf"checkpoint (?P<checkpoint>\d+) \d+s ago, \S+/TrainMLP/\w+, step (?P<step>\d+)/{TOTAL}, loss=\S+, accuracy=\S+")


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Luigid]:
    """``luigid`` with the cluster config's ``[scheduler]`` section, short timings."""
    server = Luigid(tmp_path / "luigid", config=cluster_config({"scheduler": SCHEDULER}, sections=("scheduler",)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(scheduler: Luigid, s3: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Workers of the sweep ``SWEEP`` (or the indirect parameter) against ``scheduler`` and S3."""
    cluster = Cluster(scheduler, s3, tmp_path, getattr(request, "param", SWEEP))
    try:
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()


class Cluster:
    """The scheduler, the S3 server, worker processes and the sweep they run."""

    def __init__(self, scheduler: Luigid, s3: Any, folder: Path, params: dict[str, Any]) -> None:
        self.scheduler, self.s3, self.folder, self.params = scheduler, s3, folder, params
        core = {"scheduler_port": scheduler.port, "rpc_retry_wait": 1, "rpc_retry_attempts": 60}
        self.cfg = folder / "luigi-cluster.cfg"
        self.cfg.write_text(cluster_config({"core": core, "worker": WORKER}))
        self.env = {**s3.env, "LUIGI_SCHEDULER_HOST": "127.0.0.1", "LUIGI_CHECKPOINT_BUCKET": BUCKET}
        self.workers: list[WorkerProcess] = []
        self.sweep = Sweep(
            checkpoint_root=f"s3://{BUCKET}/runs", export_root=f"s3://{BUCKET}/exports",
            storage_options=s3.storage_options, **{**params, "date": datetime.date.fromisoformat(params["date"])},
        )
        self.runs = {run.run_id(): run for run in self.sweep.runs()}

    def start_worker(self, name: str, *extra: str) -> WorkerProcess:
        # --no-lock: luigi refuses a second identical command on one machine.
        worker = WorkerProcess.start("Sweep", self.params, cfg=self.cfg, log=self.folder / f"{name}.log", env=self.env,
                                     extra=("--no-lock", *extra))
        self.workers.append(worker)
        return worker

    def running(self) -> list[dict[str, Any]]:
        """Running ``TrainMLP`` tasks: run id, worker pid, progress, checkpoint step in the status."""
        found = []
        for entry in training_entries(self.scheduler.task_list(status="RUNNING")):
            status = STATUS.fullmatch(entry.get("status_message") or "")
            found.append({
                "run_id": run_id_of(entry), "pid": worker_pid(entry.get("worker_running")),
                "progress": entry.get("progress_percentage"),
                "step": int(status["step"]) if status else None,
                "checkpoint": int(status["checkpoint"]) if status else None,
            })
        return found

    def done_runs(self) -> set[str]:
        return {run_id_of(entry) for entry in training_entries(self.scheduler.task_list(status="DONE"))}

    def assert_all_finished_like(self, references: dict[str, Any]) -> None:
        """Every run's final model equals the uninterrupted one; every export exists."""
        assert references.keys() == self.runs.keys()
        for run_id, run in self.runs.items():
            assert run.complete(), run_id
            assert_same_state(run.output().load(), references[run_id])
        for export in self.sweep.exports():
            assert export.output().exists(), export
        done = self.scheduler.task_list(status="DONE").values()
        assert [entry["name"] for entry in done].count("Sweep") == 1


def test_a_sweep_is_one_run_and_one_export_per_grid_point_sharing_the_other_parameters(tmp_path: Path) -> None:
    argv = ["Sweep", *cli_args({**SWEEP, "learning_rates": [0.1, 0.2], "seeds": [3], "hiddens": ["8", "4,4"]})]
    with CmdlineParser.global_instance(argv) as parser:
        sweep = parser.get_task_obj()
    runs = sweep.runs()
    grid = [(r.learning_rate, r.seed, r.hidden) for r in runs]
    assert grid == [(0.1, 3, "8"), (0.1, 3, "4,4"), (0.2, 3, "8"), (0.2, 3, "4,4")]
    assert len({r.run_id() for r in runs}) == 4
    assert all((r.total_steps, r.checkpoint_every, r.step_delay, r.samples) == (TOTAL, EVERY, 0.05, 256) for r in runs)
    exports = sweep.exports()
    assert [e.training_task() for e in exports] == runs
    assert all(e.after_training and e.date == datetime.date(2026, 11, 28) for e in exports)
    assert sweep.requires() == [*runs, *exports]

    local = sweep.clone(checkpoint_root=str(tmp_path / "runs"), export_root=str(tmp_path / "exports"),
                        step_delay=0, total_steps=20)
    assert luigi.build([local], local_scheduler=True, log_level="WARNING")
    assert local.complete()
    assert all(export.output().exists() for export in local.exports())


def label(run_id: str) -> str:
    return f"TrainMLP {run_id}"


def resumes(output: str, run_id: str) -> list[int]:
    return [int(n) for n in re.findall(rf"{label(run_id)}: resumed from step (\d+) of {TOTAL}", output)]


def starts(output: str, run_id: str) -> int:
    return output.count(f"{label(run_id)}: starting at step 0 of {TOTAL}")


@pytest.mark.slow
def test_a_killed_worker_s_run_resumes_from_its_s3_checkpoint_on_the_other_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    # The victim runs its tasks in a forked child: killing its process group kills both.
    victim = cluster.start_worker("victim", "--worker-force-multiprocessing")
    survivor = cluster.start_worker("survivor")

    def both_training_one_of_the_victim_s_past_a_checkpoint() -> dict[str, Any] | None:
        running = cluster.running()
        if {r["pid"] for r in running} != {victim.pid, survivor.pid}:
            return None
        mine = [r for r in running if r["pid"] == victim.pid and r["checkpoint"] and r["step"] < TOTAL - 2 * EVERY]
        return mine[0] if mine and all(r["step"] for r in running) else None

    held = wait_for(both_training_one_of_the_victim_s_past_a_checkpoint, timeout=90, interval=0.05,
                    what="both workers training, the victim past a checkpoint")
    # The scheduler's task list shows progress and the status message of a running run.
    assert 0 < held["progress"] < 100 and held["checkpoint"] <= held["step"] < TOTAL
    store = cluster.runs[held["run_id"]].checkpoint_store()
    assert held["checkpoint"] in store.steps()

    victim.kill_group()
    killed_at = datetime.datetime.now(datetime.timezone.utc)
    assert store.latest_step() < TOTAL, "the run ended before the kill"

    assert survivor.wait() == 0, survivor.output()
    output = survivor.output()
    [resumed] = resumes(output, held["run_id"])
    assert held["checkpoint"] <= resumed < TOTAL
    assert starts(output, held["run_id"]) == 0
    assert starts(victim.output(), held["run_id"]) == 1
    # The store's history: the victim wrote the steps up to the resume point,
    # the survivor only the later ones (nothing rewritten, nothing skipped).
    assert store.steps() == list(range(EVERY, TOTAL + 1, EVERY))
    for step in store.steps():
        created = store.info(step).created
        assert (created < killed_at) == (step <= resumed), (step, created, killed_at)
    assert "checkpoint skipped" not in output
    cluster.assert_all_finished_like(reference_runs(cluster.sweep, tmp_path / "reference"))


@pytest.mark.slow
def test_luigid_restarted_from_its_state_file_keeps_checkpoints_and_completed_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    workers = [cluster.start_worker("first"), cluster.start_worker("second")]

    def one_done_one_past_a_checkpoint() -> tuple[set[str], dict[str, Any]] | None:
        done = cluster.done_runs()
        training = [r for r in cluster.running() if r["checkpoint"] and r["step"] < TOTAL - 2 * EVERY]
        return (done, training[0]) if done and training else None

    done, training = wait_for(one_done_one_past_a_checkpoint, timeout=90, interval=0.05,
                              what="a run done and another past a checkpoint")
    finals = {run_id: cluster.runs[run_id].checkpoint_store().info(TOTAL).created for run_id in done}

    scheduler = cluster.scheduler
    scheduler.stop()  # SIGTERM: luigid writes its state file and exits
    assert scheduler.state_path.stat().st_size > 0
    # The workers retry their calls to the scheduler (progress reports too).
    wait_for(lambda: "Retrying attempt" in "".join(w.output() for w in workers), timeout=30,
             what="a worker retrying the scheduler")
    scheduler.start()
    assert cluster.done_runs() >= done

    for worker in workers:
        assert worker.wait() == 0, worker.output()
    outputs = "".join(worker.output() for worker in workers)
    for run_id in cluster.runs:
        # Each run trained once from step 0 to the end: nothing lost, nothing redone.
        assert starts(outputs, run_id) == 1 and not resumes(outputs, run_id), run_id
    for run_id, created in finals.items():
        assert cluster.runs[run_id].checkpoint_store().info(TOTAL).created == created
    cluster.assert_all_finished_like(reference_runs(cluster.sweep, tmp_path / "reference"))


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [TWO_RUNS], ids=["two-runs"], indirect=True)
def test_sigterm_to_a_forked_worker_s_process_group_saves_checkpoints_that_another_worker_resumes(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Two runs train at once, each in a forked child of the worker process.
    terminated = cluster.start_worker("terminated", "--workers", "2")

    def two_runs_training() -> list[dict[str, Any]] | None:
        running = [r for r in cluster.running() if r["pid"] == terminated.pid and r["step"]]
        return running if len(running) == 2 else None

    wait_for(two_runs_training, timeout=90, interval=0.05, what="two runs training")
    terminated.kill_group(signal.SIGTERM)
    assert terminated.process.returncode == -signal.SIGTERM  # the worker process itself dies at once
    terminated.wait_group()  # its task children save a checkpoint and stop
    saved = {
        run_id: int(step)
        for run_id, step in re.findall(rf"TrainMLP (\w+): interrupted by SIGTERM after step (\d+)/{TOTAL}",
                                       terminated.output())
    }
    assert len(saved) == 2, terminated.output()
    for run_id, step in saved.items():
        assert 0 < step < TOTAL and cluster.runs[run_id].checkpoint_store().latest_step() == step

    # Once the scheduler has noticed the dead worker, another one takes its runs.
    successor = cluster.start_worker("successor")
    assert successor.wait() == 0, successor.output()
    for run_id, step in saved.items():
        assert resumes(successor.output(), run_id) == [step]
    cluster.assert_all_finished_like(reference_runs(cluster.sweep, tmp_path / "reference"))
