"""Campaign 5: several processes saving, restoring and pruning one run.

Each worker loops until the deadline: save the next step (after the newest it
sees, sometimes one further, so writers collide: ``StepExistsError`` is the
only exception allowed), restore the newest checkpoint (it must equal
``make_state(step)`` and be at least the newest step this worker committed), or
prune. One operation is one trial; an unreadable or wrong restore is data lost.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .env import SoakEnv, kill, start_worker
from .report import CampaignResult, Tally
from .scale import Scale
from .states import make_state, mismatch

NBYTES = 256 << 10
KEEP_LAST = 3


def busy_worker(root: str, options: dict[str, Any], seed: int, seconds: float, out: str) -> None:
    """Worker: random saves, restores and prunes until ``seconds`` have passed."""
    from luigi_checkpoint.storage.checkpoints import CheckpointStore
    from luigi_checkpoint.storage.errors import CheckpointNotFoundError, StepExistsError

    rng = random.Random(seed)
    store = CheckpointStore(root, keep_last=KEEP_LAST, storage_options=options)
    ops: Counter[str] = Counter()
    problems: list[str] = []
    lost = 0
    worst = 0.0
    committed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        op = rng.choices(["save", "restore", "prune"], [5, 4, 1])[0]
        started = time.monotonic()
        try:
            if op == "save":
                step = (store.latest_step() or 0) + 1 + rng.randrange(2)
                try:
                    store.save(step, make_state(step, NBYTES), {"writer": seed})
                    committed = max(committed, step)
                except StepExistsError:
                    ops["step exists"] += 1
            elif op == "restore":
                try:
                    step, state = store.restore()
                except CheckpointNotFoundError as exc:
                    if committed:
                        raise
                    ops["nothing yet"] += 1
                    del exc
                else:
                    wrong = mismatch(state, step, NBYTES)
                    if wrong:
                        problems.append(f"unreadable or wrong restore: step {step}: {wrong}")
                        lost += 1
                    elif step < committed:
                        problems.append(f"restore went back: step {step} after this worker committed {committed}")
            else:
                store.prune()
        except Exception as exc:  # everything but StepExistsError is a finding
            problems.append(
                f"{op} raised {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]} "
                f"(steps listed now: {_steps_now(store)})"
            )
        ops[op] += 1
        worst = max(worst, time.monotonic() - started)
    Path(out).write_text(json.dumps({"ops": ops, "problems": problems, "lost": lost, "worst": worst}))


def _steps_now(store: Any) -> str:
    """The steps of the run right after a failure, for the report."""
    try:
        return str(store.steps()[-8:])
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def run(scale: Scale, env: SoakEnv, kind: str, *, seed: int = 5) -> CampaignResult:
    """``kind`` is ``"local"`` or ``"s3"``."""
    n = scale.concurrency_workers
    tally = Tally(f"concurrent save/restore/prune ({kind}, {n} processes, {scale.concurrency_seconds:.0f} s)")
    folder = env.folder(f"concurrency-{kind}")
    root = str(folder / "run") if kind == "local" else env.s3_url("concurrency")
    options = {} if kind == "local" else env.s3_options()
    outs = [folder / f"worker-{i}.json" for i in range(n)]
    workers = [
        start_worker(busy_worker, root, options, seed * 100 + i, scale.concurrency_seconds, str(out))
        for i, out in enumerate(outs)
    ]
    totals: Counter[str] = Counter()
    for worker, out in zip(workers, outs):
        worker.join(scale.concurrency_seconds + 300)
        kill(worker)
        if not out.exists():
            tally.trial([f"worker died: exit {worker.exitcode}"], lost=False)
            continue
        report = json.loads(out.read_text())
        totals.update(report["ops"])
        tally.time(report["worst"])
        operations = sum(report["ops"][op] for op in ("save", "restore", "prune") if op in report["ops"])
        for problem in report["problems"]:
            tally.trial([problem], lost=problem.startswith("unreadable"))
        for _ in range(operations - len(report["problems"])):
            tally.trial([])
    tally.notes.append(", ".join(f"{count} {op}" for op, count in sorted(totals.items())))
    return tally.result()
