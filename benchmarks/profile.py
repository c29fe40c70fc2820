"""Where our save and load spend their time: ``python -m benchmarks.profile``.

Prints the rates of the building blocks on this machine (CRC-32, memory copy,
``os.write`` and ``readinto`` with a hot page cache) and a cProfile of one
``dump`` and one ``load`` of the benchmark state, sorted by own time. cProfile
sees only the calling thread: time spent waiting for the CRC helper thread
shows up as ``Future.result``/lock waits.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable

import numpy as np

from .bench import SCRATCH
from .state import MiB, make_layout, make_state, read_raw, warm_page_cache, write_raw


def _rate(label: str, nbytes: int, func: Callable[[], object], repeats: int = 3) -> None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"  {label:<44} {nbytes / best / 1e9:6.2f} GB/s  ({best * 1000:7.1f} ms)")


def building_blocks(state: dict[str, np.ndarray], folder: str) -> None:
    nbytes = sum(a.nbytes for a in state.values())
    raw = os.path.join(folder, "blocks.bin")
    fresh = {k: np.empty_like(v) for k, v in state.items()}
    for buffer in fresh.values():
        buffer.fill(0)
    print(f"building blocks on {nbytes / MiB:.0f} MiB (best of 3):")
    _rate("zlib.crc32", nbytes, lambda: [zlib.crc32(a) for a in state.values()])
    _rate("np.copyto into faulted-in buffers", nbytes, lambda: [np.copyto(fresh[k], v) for k, v in state.items()])
    _rate("np.array copy (fresh memory)", nbytes, lambda: [np.array(v) for v in state.values()])
    _rate("os.write (page cache, no fsync)", nbytes, lambda: write_raw(state, raw))
    layout = make_layout(nbytes, len(state))
    warm_page_cache(raw)
    _rate("readinto np.empty (hot page cache)", nbytes, lambda: read_raw(layout, raw))


def _profile(label: str, func: Callable[[], object], top: int) -> None:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(func)
    print(f"\n{label}: {time.perf_counter() - start:.3f} s wall")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start_at = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print("\n".join(lines[start_at : start_at + top + 1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--arrays", type=int, default=8)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    from luigi_checkpoint.storage.archive import dump, load

    state = make_state(make_layout(args.size_mb * MiB, args.arrays))
    SCRATCH.mkdir(exist_ok=True)
    folder = tempfile.mkdtemp(prefix="profile-", dir=SCRATCH)
    path = os.path.join(folder, "ours.zip")
    try:
        building_blocks(state, folder)

        def save() -> None:
            with open(path, "wb") as f:
                dump(state, f)

        os.sync()
        _profile("dump (open file, no fsync)", save, args.top)
        warm_page_cache(path)
        _profile("load (read into fresh memory)", lambda: load(path), args.top)
        from luigi_checkpoint.storage.checkpoints import CheckpointStore

        store = CheckpointStore(os.path.join(folder, "run"), keep_last=1)
        store.save(0, state)
        os.sync()
        _profile("CheckpointStore.save(block=True), keep_last=1", lambda: store.save(1, state), args.top)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
