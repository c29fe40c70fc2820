"""Campaign 3: the disk fills up during a save.

Two ways to run out of space, each trial failing at a different byte:

* ``RLIMIT_FSIZE`` in a worker process (SIGXFSZ ignored, so ``write`` raises
  ``EFBIG``), the limit drawn anywhere in the archive, headers to manifest;
* ENOSPC on a small tmpfs (only where ``mount`` is allowed, e.g. as root in
  a container), with a filler file of random size taking the space first.

After each failed save: the error is a ``CheckpointError`` whose message names
the archive's path, no temp file remains, the step is not listed, and the
previous checkpoint restores exactly.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .env import SoakEnv, start_worker
from .report import CampaignResult, Tally
from .scale import MB, Scale
from .states import make_state, mismatch

NBYTES = 4 * MB


def limited_save(root: str, step: int, limit: int | None, out: str) -> None:
    """Worker: save ``step`` with files limited to ``limit`` bytes; report as JSON."""
    from luigi_checkpoint.storage.checkpoints import CheckpointStore
    from luigi_checkpoint.storage.errors import CheckpointError

    store = CheckpointStore(root, keep_last=None)
    state = make_state(step, NBYTES)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    started = time.monotonic()
    try:
        store.save(step, state)
        report: dict[str, Any] = {"ok": True}
    except Exception as exc:
        report = {
            "ok": False,
            "error": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc),
            "clear": isinstance(exc, CheckpointError),
        }
    report["seconds"] = time.monotonic() - started
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    Path(out).write_text(json.dumps(report))


@contextmanager
def _tmpfs(folder: Path, size: int) -> Iterator[Path | None]:
    """A tmpfs of ``size`` bytes mounted on ``folder``, or None if mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True, check=False,
    ).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


def _trial(root: Path, step: int, limit: int | None, workdir: Path, tally: Tally) -> None:
    from luigi_checkpoint.storage.checkpoints import CheckpointStore, archive_name

    out = workdir / f"trial-{step}.json"
    worker = start_worker(limited_save, str(root), step, limit, str(out))
    worker.join(120)
    store = CheckpointStore(str(root), keep_last=None)
    problems: list[str] = []
    what = "RLIMIT_FSIZE" if limit is not None else "ENOSPC"
    report = json.loads(out.read_text()) if out.exists() else {"ok": False, "error": "crash", "clear": False, "message": f"worker exit {worker.exitcode}"}
    tally.time(report.get("seconds", 0.0))
    if report["ok"]:
        problems.append(f"save did not fail under {what}: limit {limit}, step {step} saved")
    else:
        if not report["clear"]:
            problems.append(f"raw error on {what}: {report['error']}: {report['message']}")
        if archive_name(step) not in report["message"]:
            problems.append(f"error without the archive path on {what}: {report['error']}: {report['message']}")
    temps = [p.name for p in root.iterdir() if p.name.endswith(".partial")]
    if temps:
        problems.append(f"temp file left on {what}: {temps}")
        for name in temps:
            (root / name).unlink()
    if not report["ok"] and step in store.steps():
        problems.append(f"failed step listed on {what}: step {step}")
    previous, state = store.restore(step - 1) if (step - 1) in store.steps() else (step - 1, None)
    wrong = "missing" if state is None else mismatch(state, previous, NBYTES)
    lost = bool(wrong)
    if wrong:
        problems.append(f"previous checkpoint damaged on {what}: step {previous}: {wrong}")
    tally.trial(problems, lost=lost)


def _advance(root: Path, step: int) -> None:
    """Once there is room, the same save works; older steps are dropped."""
    from luigi_checkpoint.storage.checkpoints import CheckpointStore

    CheckpointStore(str(root), keep_last=1).save(step, make_state(step, NBYTES))


def run(scale: Scale, env: SoakEnv, *, seed: int = 3) -> CampaignResult:
    from luigi_checkpoint.storage.checkpoints import CheckpointStore

    tally = Tally("disk full during save")
    rng = random.Random(seed)
    workdir = env.folder("diskfull")
    root = workdir / "run"
    store = CheckpointStore(str(root), keep_last=None)
    size = store.save(0, make_state(0, NBYTES)).size
    step = 1
    rlimit_trials = (scale.diskfull_trials + 1) // 2
    specials = [0, 1, 100, size - 200, size - 1]
    while step <= rlimit_trials:
        limit = specials[step - 1] if step <= len(specials) else rng.randrange(size)
        _trial(root, step, limit, workdir, tally)
        _advance(root, step)
        step += 1
    with _tmpfs(workdir / "tmpfs", 3 * size) as small:
        if small is None:
            tally.notes.append("ENOSPC trials skipped: mounting a tmpfs is not allowed here")
            return tally.result()
        root = small / "run"
        CheckpointStore(str(root), keep_last=None).save(step - 1, make_state(step - 1, NBYTES))
        for _ in range(scale.diskfull_trials - rlimit_trials):
            filler = small / "filler"
            filler.write_bytes(b"\0" * rng.randrange(size, 2 * size))
            _trial(root, step, None, workdir, tally)
            filler.unlink()
            _advance(root, step)
            step += 1
    return tally.result()
