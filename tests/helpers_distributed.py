"""Helpers of the distributed tests: the cluster config, worker processes, a sweep's runs.

The workers are ``luigi --module luigi_checkpoint.pipeline.mlp Sweep ...`` commands, each in a
session of its own so that killing one kills its whole process group (the
Luigi worker and, in forked mode, its task child).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import luigi

from luigi_checkpoint.pipeline.mlp import Sweep, TrainMLP
from tests.helpers_luigi import LUIGI, REPO

CLUSTER_CFG = REPO / "configs" / "luigi-cluster.cfg"


def cluster_config(overrides: Mapping[str, Mapping[str, Any]], *, sections: tuple[str, ...] = ()) -> str:
    """The text of ``configs/luigi-cluster.cfg`` with ``overrides`` ({section: {key: value}}).

    ``sections`` keeps only those sections (all when empty). ``${NAME}``
    references stay as they are, for Luigi to read from the environment.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CLUSTER_CFG)
    for section, values in overrides.items():
        if not parser.has_section(section):
            parser.add_section(section)
        for key, value in values.items():
            parser.set(section, key, str(value))
    lines = []
    for section in parser.sections():
        if sections and section not in sections:
            continue
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in parser.items(section)]
        lines.append("")
    return "\n".join(lines)


def cli_args(params: Mapping[str, Any]) -> list[str]:
    """``{"seeds": [1, 2]}`` -> ``["--seeds", "[1, 2]"]`` (lists and dicts as JSON)."""
    args: list[str] = []
    for name, value in params.items():
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        args += [f"--{name.replace('_', '-')}", text]
    return args


@dataclass
class WorkerProcess:
    """One ``luigi --module luigi_checkpoint.pipeline.mlp <task>`` worker in its own process group."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, task: str, params: Mapping[str, Any], *, cfg: Path, log: Path, env: Mapping[str, str],
        extra: tuple[str, ...] = (),
    ) -> WorkerProcess:
        environment = {
            **os.environ, **env, "LUIGI_CONFIG_PATH": str(cfg), "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1",
        }
        command = [str(LUIGI), "--module", "luigi_checkpoint.pipeline.mlp", task, *cli_args(params), *extra]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=log.parent,
                start_new_session=True,
            )
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (the worker and its task children)."""
        os.killpg(self.process.pid, sig)
        self.process.wait()

    def wait_group(self, timeout: float = 60) -> None:
        """Wait until no process of the worker's group is left (forked task children too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise TimeoutError(f"processes of group {self.process.pid} still running")

    def wait(self, timeout: float = 180) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill what is left of the group (test clean-up)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_pid(worker_running: str | None) -> int | None:
    """The process id in a scheduler's ``worker_running`` (``Worker(..., pid=123)``)."""
    found = re.search(r"\bpid=(\d+)", worker_running or "")
    return int(found.group(1)) if found else None


def run_id_of(entry: Mapping[str, Any]) -> str:
    """The run id of a ``TrainMLP`` entry of the scheduler's task list."""
    return TrainMLP.from_str_params(entry["params"]).run_id()


def training_entries(task_list: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``TrainMLP`` entries of a task list."""
    return [entry for entry in task_list.values() if entry["name"] == "TrainMLP"]


def reference_runs(sweep: Sweep, root: Path) -> dict[str, Any]:
    """Final states of the sweep's runs trained uninterrupted in this process, by run id."""
    runs = [run.clone(checkpoint_root=str(root), storage_options={}, checkpoint_every=0,
                      checkpoint_seconds=0, step_delay=0) for run in sweep.runs()]
    assert luigi.build(runs, local_scheduler=True, log_level="WARNING")
    return {run.run_id(): run.output().load() for run in runs}
