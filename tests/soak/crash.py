"""Campaign 1: SIGKILL during save, on local disk and on S3.

A worker process saves ``make_state(step)`` for step after step and writes
``committed <step> <monotonic time>`` (one unbuffered ``write``) after each
``save()`` returns. The harness kills it with SIGKILL at a random instant of
its save cycle, then checks, with a fresh store:

* ``restore()`` returns a whole state equal to ``make_state(step)``;
* that step is not older than the newest committed one (nothing lost);
* every listed step passes the cheap manifest check, and the folder holds
  nothing but step archives and (local disk only) dot-prefixed temp files.

Temp files of killed local writes are counted, then removed by the harness
(the store removes them once they are older than ``TEMP_GRACE``, longer than a
trial). Incomplete S3 uploads of killed saves are left to the store, whose
prune aborts those of steps whose archive exists (the next saver saves the
killed step again): uploads of steps two or more behind the newest committed
one are a finding. A step killed again and again piles them up, so past
``MAX_STRAYS`` the harness aborts them (what a bucket lifecycle rule does)
to bound the S3 server's memory.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from .env import SoakEnv, kill, start_worker
from .report import CampaignResult, Tally
from .scale import Scale
from .states import make_state, mismatch

KEEP_LAST = 2
MAX_STRAYS = 3
"""Incomplete S3 uploads the harness lets pile up (parts of 200 MB states
held by the moto server) before aborting them, as a lifecycle rule would."""


def saver(root: str, options: dict[str, Any], nbytes: int, log: str) -> None:
    """Worker: save checkpoints forever, logging each committed step."""
    from luigi_checkpoint.storage.checkpoints import CheckpointStore

    store = CheckpointStore(root, keep_last=KEEP_LAST, storage_options=options)
    step = (store.latest_step() or 0) + 1
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"started {step} {time.monotonic()}\n".encode())
    while True:
        store.save(step, make_state(step, nbytes))
        os.write(fd, f"committed {step} {time.monotonic()}\n".encode())
        step += 1


def _read_log(log: Path) -> list[tuple[str, int, float]]:
    if not log.exists():
        return []
    entries = []
    for line in log.read_text().splitlines():
        word, step, stamp = line.split()
        entries.append((word, int(step), float(stamp)))
    return entries


def _wait_for(log: Path, process: Any, word: str, count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(entry[0] == word for entry in _read_log(log)) < count:
        if process.exitcode is not None:
            raise RuntimeError(f"saver exited with {process.exitcode}, {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"saver did not log {count} x {word!r} in {timeout} s, {log}")
        time.sleep(0.005)


class _Run:
    """One storage folder under crash trials."""

    def __init__(self, env: SoakEnv, kind: str, nbytes: int, tally: Tally) -> None:
        self.env = env
        self.tally = tally
        self.kind = kind
        self.nbytes = nbytes
        if kind == "local":
            self.root = str(env.folder("crash-local"))
            self.options: dict[str, Any] = {}
        else:
            self.root = env.s3_url("crash-s3")
            self.options = env.s3_options()
        self.logs = env.folder(f"crash-{kind}-logs")
        self.newest_committed = 0
        self.cycles: list[float] = []
        self.litter = 0
        self.trimmed = 0

    def cycle(self) -> float:
        return statistics.median(self.cycles) if self.cycles else 0.0

    def trial(self, index: int, rng: random.Random) -> None:
        log = self.logs / f"trial-{index}.log"
        process = start_worker(saver, self.root, self.options, self.nbytes, str(log))
        try:
            if self.cycles:
                _wait_for(log, process, "started", 1)
            else:  # calibration: measure the save cycle first
                _wait_for(log, process, "committed", 2)
            time.sleep(rng.uniform(0.0, 1.25 * self.cycle()))
        finally:
            kill(process)
        entries = _read_log(log)
        commits = [(step, stamp) for word, step, stamp in entries if word == "committed"]
        stamps = [stamp for _, stamp in commits]
        self.cycles += [b - a for a, b in zip(stamps, stamps[1:])]
        if commits:
            self.newest_committed = max(self.newest_committed, commits[-1][0])
        problems, lost = self.check()
        self.tally.trial(problems + self.clean(), lost=lost)

    def check(self) -> tuple[list[str], bool]:
        from luigi_checkpoint.storage.checkpoints import CheckpointStore, step_of
        from luigi_checkpoint.storage.fs import Location, fresh_listing, is_temp_name, resolve

        store = CheckpointStore(self.root, keep_last=KEEP_LAST, storage_options=self.options)
        problems: list[str] = []
        started = time.monotonic()
        try:
            step, state = store.restore()
        except Exception as exc:  # any failure to restore after a crash is a finding
            self.tally.time(time.monotonic() - started)
            if self.newest_committed == 0 and type(exc).__name__ == "CheckpointNotFoundError":
                return [], False
            return [f"restore failed: {type(exc).__name__}: {exc}"], self.newest_committed > 0
        self.tally.time(time.monotonic() - started)
        lost = False
        if step < self.newest_committed:
            problems.append(f"committed step lost: restored {step}, newest committed {self.newest_committed}")
            lost = True
        wrong = mismatch(state, step, self.nbytes)
        if wrong:
            problems.append(f"partial or wrong restore: step {step}: {wrong}")
            lost = True
        location = resolve(self.root, self.options)
        fs = location.fs
        for entry in fresh_listing(location):
            name = entry["name"].rstrip("/").rpartition("/")[2]
            # A killed save may leave a temp file (local disk) or the claim of
            # its S3 upload's completion; a prune removes them once abandoned.
            if step_of(name) is None and not is_temp_name(name):
                problems.append(f"foreign object in the run folder: {name}")
        for listed in store.steps():
            try:
                store.info(listed)
            except Exception as exc:
                problems.append(f"listed step fails the cheap check: {listed}: {type(exc).__name__}: {exc}")
        return problems, lost

    def clean(self) -> list[str]:
        """Remove local temp files; on S3 check that saves abort the uploads
        of killed saves once their step is saved (left to the store)."""
        if self.kind == "local":
            for temp in Path(self.root).glob(".*.partial"):
                temp.unlink()
                self.litter += 1
            return []
        from luigi_checkpoint.storage.checkpoints import step_of

        uploads = self.env.multipart_uploads(self.root.split("/", 3)[3])
        self.litter = max(self.litter, len(uploads))
        # a killed save leaves uploads of newest + 1, aborted by the prune
        # after that step is saved; a save killed before its prune leaves
        # those of the newest step until the next save
        stale = [u["Key"] for u in uploads if (step_of(u["Key"].rpartition("/")[2]) or 0) < self.newest_committed - 1]
        if len(uploads) > MAX_STRAYS:  # a step killed again and again: bound the server's memory
            self.trimmed += self.env.abort_uploads(self.root.split("/", 3)[3])
        return [f"incomplete uploads of old steps not aborted by later saves: {stale}"] if stale else []


def run(scale: Scale, env: SoakEnv, kind: str, *, seed: int = 1) -> CampaignResult:
    """``kind`` is ``"local"`` or ``"s3"``."""
    trials = scale.crash_local_trials if kind == "local" else scale.crash_s3_trials
    nbytes = scale.crash_local_bytes if kind == "local" else scale.crash_s3_bytes
    tally = Tally(f"crash during save ({kind}, {nbytes >> 20} MB state)")
    rng = random.Random(seed)
    folder = _Run(env, kind, nbytes, tally)
    for index in range(trials):
        folder.trial(index, rng)
    litter = (f"{folder.litter} temp files left by killed saves (removed by the harness)" if kind == "local"
              else f"at most {folder.litter} incomplete uploads at a time (aborted once their step is saved; "
              f"{folder.trimmed} aborted by the harness past {MAX_STRAYS})")
    tally.notes.append(
        f"{litter}; newest committed step {folder.newest_committed}; median save cycle {folder.cycle():.2f} s"
    )
    return tally.result()
