"""How big each campaign is: the full run of ``make soak``, the quick variant
of ``make test``, and ``BIG``, the crash campaigns with the multi-hundred-MB
states of issue 5 (``make soak SOAK_ARGS=--big``: about 20 minutes more).

The full run keeps the crash states at 96 MB (local) and 24 MB (S3) so the
whole run fits in about 20 minutes on two shared cores: one kill trial costs
about 1.5 s per 100 MB locally, and the moto server stores about 20 MB/s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MB = 1 << 20


@dataclass(frozen=True)
class Scale:
    crash_local_trials: int
    crash_s3_trials: int
    crash_local_bytes: int
    crash_s3_bytes: int
    fault_trials: int
    fault_bytes: int
    diskfull_trials: int
    fuzz_inputs: int
    concurrency_seconds: float
    concurrency_workers: int
    luigi_trials: int
    luigi_steps: int
    probe_depths: tuple[int, ...]


FULL = Scale(
    crash_local_trials=200,
    crash_s3_trials=50,
    crash_local_bytes=96 * MB,
    crash_s3_bytes=24 * MB,
    fault_trials=16,
    fault_bytes=12 * MB,
    diskfull_trials=40,
    fuzz_inputs=100_000,
    concurrency_seconds=75.0,
    concurrency_workers=4,
    luigi_trials=30,
    luigi_steps=200,
    probe_depths=(100_000, 1_000_000),
)

QUICK = Scale(
    crash_local_trials=5,
    crash_s3_trials=2,
    crash_local_bytes=4 * MB,
    crash_s3_bytes=6 * MB,
    fault_trials=2,
    fault_bytes=2 * MB,
    diskfull_trials=4,
    fuzz_inputs=1_500,
    concurrency_seconds=3.0,
    concurrency_workers=3,
    luigi_trials=2,
    luigi_steps=100,
    probe_depths=(100_000,),
)

BIG = replace(FULL, crash_local_bytes=256 * MB, crash_s3_bytes=200 * MB)
