"""Campaign 6: a ``TrainMLP`` Luigi run SIGKILLed at a random step, then rerun.

The worker process runs ``luigi.build([TrainMLP(...)], local_scheduler=True)``
(the Luigi worker is that process). Each trial kills it at a random instant of
its run (which step that was is read from the run's checkpoints), reruns the
task to completion in a new process, and compares the final checkpoint with
the one of an uninterrupted run: every array and the generator state must be
identical.
"""

from __future__ import annotations

import random
import shutil
import time
from typing import Any

from .env import SoakEnv, kill, start_worker
from .report import CampaignResult, Tally
from .scale import Scale
from .states import diff

PARAMS = {"hidden": "256,256", "samples": 1024, "features": 16, "batch_size": 8, "seed": 7, "checkpoint_every": 10}


def train(root: str, params: dict[str, Any]) -> None:
    """Worker: one ``luigi.build`` of the task; exits 0 on success."""
    import luigi

    from luigi_checkpoint.pipeline.mlp import TrainMLP

    ok = luigi.build([TrainMLP(checkpoint_root=root, **params)], local_scheduler=True, log_level="WARNING")
    raise SystemExit(0 if ok else 1)


def _final(root: str, params: dict[str, Any]) -> tuple[int, Any]:
    from luigi_checkpoint.pipeline.mlp import TrainMLP

    task = TrainMLP(checkpoint_root=root, **params)
    return task.checkpoint_store().restore(task.total_steps)


def _steps(root: str, params: dict[str, Any]) -> list[int]:
    from luigi_checkpoint.pipeline.mlp import TrainMLP

    return TrainMLP(checkpoint_root=root, **params).checkpoint_store().steps()


def run(scale: Scale, env: SoakEnv, *, seed: int = 6) -> CampaignResult:
    tally = Tally(f"Luigi TrainMLP killed and rerun ({scale.luigi_steps} steps)")
    rng = random.Random(seed)
    folder = env.folder("luigi")
    params = {**PARAMS, "total_steps": scale.luigi_steps}
    reference_root = str(folder / "reference")
    started = time.monotonic()
    worker = start_worker(train, reference_root, params)
    worker.join()
    duration = time.monotonic() - started
    if worker.exitcode != 0:
        tally.trial([f"uninterrupted run failed: exit {worker.exitcode}"])
        return tally.result()
    _, reference = _final(reference_root, params)
    landed: list[int] = []
    for trial in range(scale.luigi_trials):
        root = str(folder / f"trial-{trial}")
        problems = []
        delay = rng.uniform(0.0, duration)
        while True:  # a run faster than the reference may finish first: kill sooner
            worker = start_worker(train, root, params)
            worker.join(delay)
            finished = worker.exitcode is not None
            kill(worker)
            if not finished or delay < 0.05:
                break
            shutil.rmtree(root, ignore_errors=True)
            delay /= 2
        steps = _steps(root, params)
        landed.append(steps[-1] if steps else 0)
        if finished:
            problems.append(f"not killed: the run finished before the kill (exit {worker.exitcode})")
        started = time.monotonic()
        rerun = start_worker(train, root, params)
        rerun.join(600)
        tally.time(time.monotonic() - started)
        kill(rerun)
        lost = False
        if rerun.exitcode != 0:
            problems.append(f"rerun failed: exit {rerun.exitcode} after a kill at step {landed[-1]}")
            lost = True
        else:
            step, final = _final(root, params)
            wrong = diff(final, reference)
            if wrong:
                problems.append(f"final model differs from the uninterrupted one after a kill at step {landed[-1]}: {wrong}")
                lost = True
        tally.trial(problems, lost=lost)
    tally.notes.append(f"kills landed after checkpoint steps {sorted(landed)}; uninterrupted run {duration:.1f} s")
    return tally.result()
