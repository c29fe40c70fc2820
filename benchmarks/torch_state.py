"""A torch training state, saved and loaded by our archive and by torch, side by side:
``python -m benchmarks.torch_state`` (``make bench-torch``).

The state is what a torch user checkpoints: a model's ``state_dict()`` of
float32 ``Linear`` layers and an Adam ``optimizer.state_dict()`` after one step
(two moments per parameter, and a step tensor each), about ``--size-mb`` in all
(default 1 GiB), plus ``torch.get_rng_state()``. Each case runs in this
process on local disk with a hot page cache (every file read once before its
reads are timed; ``os.sync()`` before every timed run, so no case pays for
another's write-back); the cases take turns within each repeat, in an order
reversed every other repeat, so drift of a shared machine hits all alike. The
median of ``--repeats`` is shown, with the ratio of our time to torch's (below
1: we are faster):

- save: ``storage.dump`` to an open file (no fsync, as ``torch.save`` does not
  fsync) against ``torch.save`` to a path; also ``dump`` to a path (temp file,
  fsync, rename, fsync of the folder);
- load: ``storage.load`` (torch tensors, no ``trusted=``, every member's CRC-32
  checked) against ``torch.load(weights_only=True)``, its safe mode; also
  ``storage.load(mmap=True)`` (no CRC check, tensors copied from the map).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from luigi_checkpoint.storage.archive import dump, load

MiB = 1 << 20
WIDTH = 2048  # a layer is WIDTH x WIDTH float32: 16 MiB of weights, 48 MiB with Adam's moments


def training_state(size_mb: int) -> dict[str, Any]:
    """Model and Adam state of about ``size_mb`` MiB after one step, and the RNG."""
    layers = max(1, round(size_mb * MiB / (3 * 4 * (WIDTH * WIDTH + WIDTH))))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
    optimizer = torch.optim.Adam(model.parameters())
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}


def nbytes(state: Any) -> int:
    if isinstance(state, dict):
        return sum(nbytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(nbytes(value) for value in state)
    return state.numel() * state.element_size() if isinstance(state, torch.Tensor) else 0


def _save_ours(state: Any, path: Path) -> None:
    with open(path, "wb") as f:
        dump(state, f)


def _read_once(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * MiB):
            pass


CASES: tuple[tuple[str, str, str, Callable[[Any, Path], Any]], ...] = (
    # group, name, file, run(state or None, path)
    ("save", "torch.save", "state.pt", lambda state, path: torch.save(state, path)),
    ("save", "ours dump (open file)", "ours.zip", _save_ours),
    ("save", "ours dump (path: + fsync, rename)", "ours-path.zip", lambda state, path: dump(state, path)),
    ("load", "torch.load(weights_only=True)", "state.pt", lambda _, path: torch.load(path, weights_only=True)),
    ("load", "ours load (torch tensors)", "ours.zip", lambda _, path: load(path)),
    ("load", "ours load mmap=True (copied from the map)", "ours.zip", lambda _, path: load(path, mmap=True)),
)
PEERS = {"save": "torch.save", "load": "torch.load(weights_only=True)"}


def measure(state: Any, folder: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of each case (by name) in each repeat; saves before loads."""
    times: dict[str, list[float]] = {name: [] for _, name, _, _ in CASES}
    for group in ("save", "load"):
        cases = [case for case in CASES if case[0] == group]
        for repeat in range(repeats):
            for _, name, file, run in cases if repeat % 2 == 0 else cases[::-1]:
                path = folder / file
                if group == "load":
                    _read_once(path)
                gc.collect()
                os.sync()
                started = time.perf_counter()
                result = run(state if group == "save" else None, path)
                times[name].append(time.perf_counter() - started)
                del result
    return times


def table(times: dict[str, list[float]], size: int) -> str:
    lines = [f"{'GROUP':<6} {'CASE':<42} {'MEDIAN':>8} {'GiB/s':>7} {'VS TORCH':>9}"]
    for group, name, _, _ in CASES:
        median = statistics.median(times[name])
        peer = statistics.median(times[PEERS[group]])
        lines.append(f"{group:<6} {name:<42} {median:>7.3f}s {size / median / 2**30:>7.2f} {median / peer:>8.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_state", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="state size in MiB (default 1024)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per case, the median is shown")
    parser.add_argument("--json", metavar="PATH", help="also write the times as JSON")
    args = parser.parse_args(argv)
    state = training_state(args.size_mb)
    size = nbytes(state)
    scratch = Path(__file__).resolve().parent.parent / ".bench-tmp"
    scratch.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="torch-", dir=scratch))
    try:
        times = measure(state, folder, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"torch training state: {size / MiB:.0f} MiB (model + Adam, float32), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats}, local disk, hot page cache")
    print(table(times, size))
    if args.json:
        Path(args.json).write_text(json.dumps({"state_bytes": size, "times": times}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
