"""Campaign 2: storage faults between s3fs and the S3 server.

Each trial draws a fault mix (seeded), then a worker process saves the
step after the newest committed one (a failed save is retried by the next
trial, as a rerun task would) and restores the newest checkpoint through the
fault proxy. Most
trials are weather (1-3 faults at 3-25 % per request); every fourth (the
first included) is a storm (one fault at 90 %, at most 15 of them) that
retries cannot ride out, so the failure paths run. The worker reports what
happened; the harness then looks at the bucket directly:

* a save that returned: its archive equals ``make_state(step)``;
* a save that raised: the exception is a ``CheckpointError`` (anything else is
  a finding, reported with its type and message), the previous checkpoint
  still restores exactly, and no incomplete multipart upload is left, except
  one per create request that the proxy delivered after its client had hung
  up (a request held up in the network lands after the save gave up);
* once the step is saved, no incomplete upload of it is left (its prune
  aborts them; if that prune failed under the faults, one more prune must);
* a restore that returned: whole and equal, and not older than the newest
  committed step; a restore that raised: a ``CheckpointError``.

The worker runs with ``read_timeout``/``connect_timeout`` of 2 s so that
stalls turn into client timeouts and retries within a trial.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from .env import SoakEnv, kill, start_worker
from .faultproxy import FAULTS, FaultPlan, FaultProxy
from .report import CampaignResult, Tally
from .scale import Scale
from .states import make_state, mismatch

TRIAL_TIMEOUT = 240.0
BLOCK = 5 << 20


def _outcome(exc: BaseException) -> dict[str, Any]:
    from luigi_checkpoint.storage.errors import CheckpointError

    return {
        "error": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc)[:300],
        "clear": isinstance(exc, CheckpointError),
    }


def faulty_trial(root: str, options: dict[str, Any], step: int, nbytes: int, out: str) -> None:
    """Worker: save ``step`` then restore, through the proxy; report as JSON."""
    from luigi_checkpoint.storage.checkpoints import CheckpointStore

    report: dict[str, Any] = {}
    store = CheckpointStore(root, keep_last=None, storage_options=options)
    started = time.monotonic()
    try:
        store.save(step, make_state(step, nbytes))
        report["save"] = {"ok": True}
    except Exception as exc:
        report["save"] = _outcome(exc)
    report["save"]["seconds"] = time.monotonic() - started
    started = time.monotonic()
    try:
        restored, state = CheckpointStore(root, storage_options=options).restore()
        report["restore"] = {"ok": True, "step": restored, "mismatch": mismatch(state, restored, nbytes)}
    except Exception as exc:
        report["restore"] = _outcome(exc)
    report["restore"]["seconds"] = time.monotonic() - started
    Path(out).write_text(json.dumps(report))


def _plan(rng: random.Random, seed: int) -> FaultPlan:
    """Mostly weather (1-3 faults at 3-25 % each); every fourth trial (the first one included) a storm
    (one fast-failing fault at 90 %, at most 15) that retries cannot ride out."""
    if seed % 4 == 1:
        storm = rng.choice(["reset", "reset_after", "cut", "http500"])
        return FaultPlan({storm: 0.9}, seed=seed, max_faults=15)
    kinds = rng.sample(FAULTS, rng.randint(1, 3))
    return FaultPlan({kind: rng.uniform(0.03, 0.25) for kind in kinds}, seed=seed, stall_seconds=(0.2, 3.0))


class _Bucket:
    def __init__(self, env: SoakEnv, nbytes: int) -> None:
        from luigi_checkpoint.storage.checkpoints import CheckpointStore

        self.env = env
        self.nbytes = nbytes
        self.root = env.s3_url("faults")
        self.prefix = self.root.split("/", 3)[3]
        self.direct = CheckpointStore(self.root, keep_last=None, storage_options=env.s3_options())
        self.direct.save(0, make_state(0, nbytes))
        self.committed = 0
        self.late_creates = 0  # of the step being retried
        self.late_uploads = 0

    def trial(self, index: int, proxy: FaultProxy, workdir: Path, tally: Tally) -> None:
        from luigi_checkpoint.storage.checkpoints import archive_name

        step = self.committed + 1  # a failed save is retried, as a rerun task would
        out = workdir / f"trial-{index}.json"
        options = {**self.env.s3_options(proxy.url, read_timeout=2, connect_timeout=2), "transfer_part_size": BLOCK}
        worker = start_worker(faulty_trial, self.root, options, step, self.nbytes, str(out))
        worker.join(TRIAL_TIMEOUT)
        kill(worker)
        problems: list[str] = []
        lost = False
        if not proxy.wait_idle(TRIAL_TIMEOUT):  # stalled requests land before the bucket is looked at
            problems.append("the proxy still had requests in flight long after the trial")
        if not out.exists():
            problems.append(f"hang: save+restore of step {step} did not finish in {TRIAL_TIMEOUT} s under {proxy.injected}")
            report: dict[str, Any] = {"save": {"clear": False, "error": "hang"}, "restore": {"clear": False}}
        else:
            report = json.loads(out.read_text())
            tally.time(max(report["save"]["seconds"], report["restore"]["seconds"]))
        faults = dict(proxy.injected)
        previous = self.committed
        if step in self.direct.steps():
            self.committed = step
        save = report["save"]
        if save.get("ok") and self.committed != step:
            problems.append(f"saved step missing: save of {step} returned but the archive is not there")
            lost = True
        if not save.get("ok") and not save["clear"] and save["error"] != "hang":
            problems.append(f"save failed with a raw {save['error']}: {save['message']} (faults {faults})")
        key = f"{self.prefix}/{archive_name(step)}"
        own = self.env.multipart_uploads(key)
        if self.committed == step:
            if own:  # the save's own prune may have failed under the faults
                self.direct.prune()
                own = self.env.multipart_uploads(key)
            if own:
                problems.append(f"incomplete uploads of step {step} survive its save and a prune: {len(own)}")
            self.late_creates = 0
        else:
            # Only a create request delivered after a save gave up may leave one.
            self.late_creates += sum(line.startswith("POST ") and "?uploads" in line for line in proxy.late)
            if len(own) > self.late_creates:
                problems.append(
                    f"incomplete multipart uploads after a failed save: {len(own)} left for step {step}, "
                    f"{self.late_creates} create requests landed late (faults {faults})"
                )
            self.late_uploads = max(self.late_uploads, len(own))
        for check in {previous, self.committed}:
            wrong = mismatch(self.direct.restore(check)[1], check, self.nbytes)
            if wrong:
                problems.append(f"checkpoint {check} damaged after the trial: {wrong}")
                lost = True
        restore = report.get("restore", {})
        if restore.get("ok"):
            if restore["mismatch"]:
                problems.append(f"partial or wrong restore under faults: {restore['mismatch']}")
                lost = True
            if restore["step"] < self.committed:
                problems.append(
                    f"stale restore: restore() under faults returned step {restore['step']} "
                    f"although step {self.committed} is committed (faults {faults})"
                )
        elif "clear" in restore and not restore["clear"]:
            problems.append(f"restore failed with a raw {restore['error']}: {restore['message']} (faults {faults})")
        tally.trial(problems, lost=lost)


def run(scale: Scale, env: SoakEnv, *, seed: int = 2) -> CampaignResult:
    tally = Tally("S3 storage faults (proxy)")
    rng = random.Random(seed)
    bucket = _Bucket(env, scale.fault_bytes)
    workdir = env.folder("faults")
    with FaultProxy(env.endpoint_url) as proxy:
        for index in range(1, scale.fault_trials + 1):
            proxy.set_plan(_plan(rng, seed * 100_000 + index))
            bucket.trial(index, proxy, workdir, tally)
    if bucket.late_uploads:
        tally.notes.append(f"up to {bucket.late_uploads} upload(s) made by late create requests, "
                           "aborted once their step was saved")
    return tally.result()
