"""How big each campaign is: the full run of ``make soak`` and the quick
variant of ``make test``.

The full run's crash states are 256 MB (local) and 200 MB (S3). On two
shared cores a local kill trial costs under a second, an S3 one about 10 s
(the moto server stores about 30 MB/s), so the whole run takes about 20 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    big_bytes: tuple[int, ...]


FULL = Scale(
    crash_local_trials=200,
    crash_s3_trials=50,
    crash_local_bytes=256 * MB,
    crash_s3_bytes=200 * MB,
    fault_trials=16,
    fault_bytes=12 * MB,
    diskfull_trials=40,
    fuzz_inputs=100_000,
    concurrency_seconds=120.0,
    concurrency_workers=4,
    luigi_trials=30,
    luigi_steps=200,
    probe_depths=(100_000, 1_000_000),
    big_bytes=((4 << 30) + 16 * MB + 3,),
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
    big_bytes=(16 * MB + 1, 32 * MB + 3),
)
