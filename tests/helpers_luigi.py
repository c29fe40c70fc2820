"""Helpers of the Luigi-stage tests: Luigi subprocesses, config files, test tasks.

Importable by the ``luigi`` command (``--module tests.helpers_luigi``), so
it must not import pytest.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import luigi
import numpy as np

from luigi_checkpoint.pipeline.config import luigi_config
from luigi_checkpoint.pipeline.mlp import TrainMLP
from luigi_checkpoint.tasks.training import TrainingTask

REPO = Path(__file__).resolve().parents[1]
LUIGI = Path(sys.executable).with_name("luigi")

# Retries come quickly; the worker leaves once nothing is pending.
FAST_RETRIES = {
    "worker": {"keep_alive": "true", "wait_interval": "0.1", "wait_jitter": "0.1"},
    "scheduler": {"retry_delay": "0.2", "retry_count": "3"},
}
# Failures exit non-zero (as in configs/luigi.cfg); INFO logs only.
BASE = {
    "core": {"log_level": "INFO", "autoload_range": "true"},
    "retcode": {
        "already_running": 10, "missing_data": 20, "not_run": 25,
        "task_failed": 30, "scheduling_error": 35, "unhandled_exception": 40,
    },
}


def write_cfg(path: Path, *sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a Luigi config file merging ``sections`` ({section: {key: value}})."""
    merged: dict[str, dict[str, Any]] = {}
    for group in sections:
        for name, values in group.items():
            merged.setdefault(name, {}).update(values)
    lines = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_cfg_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _cfg_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


def cli_params(params: Mapping[str, Any]) -> list[str]:
    """``{"total_steps": 5}`` -> ``["--total-steps", "5"]``."""
    args: list[str] = []
    for name, value in params.items():
        args += [f"--{name.replace('_', '-')}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


@dataclass
class LuigiProcess:
    """One ``luigi`` command running in a subprocess, output in a file."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, task: str, params: Mapping[str, Any], *, cfg: Path, log: Path,
        env: Mapping[str, str] | None = None, extra: tuple[str, ...] = ("--local-scheduler",),
        module: str = "tests.helpers_luigi",
    ) -> LuigiProcess:
        environment = {
            **os.environ, **(env or {}), "LUIGI_CONFIG_PATH": str(cfg), "PYTHONPATH": str(REPO),
            "OPENBLAS_NUM_THREADS": "1",
        }
        command = [str(LUIGI), "--module", module, task, *cli_params(params), *extra]
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=log.parent)
        return cls(process, log)

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.wait()


@dataclass
class ForkedBuild:
    """``luigi.build`` of one task in a forked child process, logs in a file.

    Forking skips the interpreter start-up, so a test can kill many runs.
    """

    process: multiprocessing.process.BaseProcess
    log: Path

    @classmethod
    def start(
        cls, task_class: type[luigi.Task], params: Mapping[str, Any], *, cfg: Path, log: Path,
        env: Mapping[str, str] | None = None,
    ) -> ForkedBuild:
        context = multiprocessing.get_context("fork")
        process = context.Process(target=_build_in_child, args=(task_class, dict(params), cfg, log, dict(env or {})))
        process.start()
        return cls(process, log)

    def alive(self) -> bool:
        return self.process.is_alive()

    def wait(self, timeout: float = 120) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        os.kill(self.process.pid, 9)
        self.process.join()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _build_in_child(
    task_class: type[luigi.Task], params: dict[str, Any], cfg: Path, log: Path, env: dict[str, str]
) -> None:
    os.environ.update(env)
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    interface = logging.getLogger("luigi-interface")
    interface.addHandler(handler)
    interface.setLevel(logging.INFO)
    with luigi_config(cfg):
        succeeded = luigi.build([task_class(**params)], local_scheduler=True)
    handler.flush()
    os._exit(0 if succeeded else 1)


def run_luigi(task: str, params: Mapping[str, Any], **kwargs: Any) -> tuple[int, str]:
    """Run a ``luigi`` command to its end: (exit code, output)."""
    proc = LuigiProcess.start(task, params, **kwargs)
    return proc.wait(), proc.output()


def wait_for(condition: Callable[[], Any], *, timeout: float = 60, interval: float = 0.01, what: str = "") -> Any:
    """Poll until ``condition()`` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what or condition}")


def has_started(output: str) -> bool:
    """Whether the run logged where it starts ("starting at step 0", "resumed from step N")."""
    return re.search(r"resumed from step \d+ of \d+|starting at step 0 of", output) is not None


def resumed_step(output: str) -> int | None:
    """The step of the "resumed from step N of M" line, None if it started at 0."""
    if not has_started(output):
        raise AssertionError(f"no start or resume line in:\n{output}")
    found = re.findall(r"resumed from step (\d+) of \d+", output)
    return int(found[-1]) if found else None


def flat_arrays(state: Any, prefix: str = "") -> dict[str, Any]:
    """Every array and scalar of an MLP state, by path (the Generator as its state)."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list):
        items = enumerate(state)
    elif isinstance(state, np.random.Generator):
        return {prefix: json.dumps(state.bit_generator.state, default=int, sort_keys=True)}
    else:
        return {prefix: state}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flat_arrays(value, f"{prefix}/{key}"))
    return flat


def assert_same_state(actual: Any, expected: Any) -> None:
    """Bit-exact equality of two MLP states."""
    a, b = flat_arrays(actual), flat_arrays(expected)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(b[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


class SlowTrainMLP(TrainMLP):
    """TrainMLP with a pause in every step, so tests can act while it trains."""

    step_seconds = luigi.FloatParameter(default=0.01, significant=False)

    def train_step(self, state: Any, step: int) -> dict[str, float]:
        # docstring inherited
        time.sleep(self.step_seconds)
        return super().train_step(state, step)


@dataclass
class Counter:
    """A state class of user code: not trusted unless the task says so."""

    value: np.ndarray
    steps: int = 0


class CountingTask(TrainingTask):
    """A minimal TrainingTask whose state is a user dataclass."""

    checkpoint_every = luigi.IntParameter(default=2, significant=False)
    trust = luigi.BoolParameter(default=True, significant=False)

    @property
    def trusted_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return (Counter,) if self.trust else ()

    def init_state(self) -> Counter:
        # docstring inherited
        return Counter(np.zeros(3))

    def train_step(self, state: Counter, step: int) -> dict[str, float]:
        # docstring inherited
        state.value += step
        state.steps += 1
        return {"total": float(state.value.sum())}
