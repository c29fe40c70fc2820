"""Safe loading of an object-heavy pickle against plain pickle: ``python -m benchmarks.safe_load``.

A checkpoint's pickle is small when its arrays are members, but a state with
many Python objects must not be punished: the state here is 1M floats and 100k
strings (about 10 MB pickled) plus a few small containers, once alone and once
with a numpy Generator (which makes the loader settle its pending objects over
the whole result). Each row is the median of ``--repeats`` runs in this
process, against ``pickle.loads`` of the same bytes; the issue-13 target is
at most 5x. The last rows load the same state from an archive with
``storage.load`` against ``pickle.load`` of a file.
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from luigi_checkpoint import storage
from luigi_checkpoint.storage._trust import load_pickle

TARGET = 5.0


def object_heavy(floats: int, strings: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    return {
        "losses": [rng.random() for _ in range(floats)],
        "tokens": [f"token-{i}-{rng.randrange(10**9)}" for i in range(strings)],
        "config": {"lr": 0.1, "layers": [64, 32], "name": "mlp", "step": 3},
    }


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def rows(floats: int, strings: int, repeats: int) -> list[tuple[str, int, float, float]]:
    """``(case, bytes, ours seconds, plain pickle seconds)``."""
    plain = object_heavy(floats, strings)
    with_rng = {**plain, "rng": np.random.default_rng(0)}
    out = []
    for label, state, protocol in (("object-heavy, protocol 5", plain, 5),
                                   ("object-heavy, protocol 2", plain, 2),
                                   ("object-heavy + Generator, protocol 5", with_rng, 5)):
        data = pickle.dumps(state, protocol=protocol)
        ours = median_seconds(lambda: load_pickle(data, source="bench"), repeats)
        peer = median_seconds(lambda: pickle.loads(data), repeats)
        out.append((label, len(data), ours, peer))
    with tempfile.TemporaryDirectory() as folder:
        archive, plain_file = Path(folder) / "state.zip", Path(folder) / "state.pkl"
        storage.dump(with_rng, archive)
        plain_file.write_bytes(pickle.dumps(with_rng, protocol=5))

        def load_plain() -> Any:
            with open(plain_file, "rb") as f:
                return pickle.load(f)

        out.append(("archive: storage.load vs pickle.load of a file", archive.stat().st_size,
                    median_seconds(lambda: storage.load(archive), repeats),
                    median_seconds(load_plain, repeats)))
    return out


def report(found: list[tuple[str, int, float, float]]) -> str:
    lines = [f"{'case':<48} {'MB':>6} {'ours s':>8} {'pickle s':>9} {'ratio':>6}  target <= {TARGET:.0f}x"]
    for label, size, ours, peer in found:
        ratio = ours / peer
        lines.append(f"{label:<48} {size / 1e6:>6.1f} {ours:>8.3f} {peer:>9.3f} {ratio:>5.1f}x  "
                     f"{'met' if ratio <= TARGET else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.safe_load", description=__doc__.split("\n")[0])
    parser.add_argument("--floats", type=int, default=1_000_000)
    parser.add_argument("--strings", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"safe loading, median of {args.repeats}, {args.floats} floats and {args.strings} strings")
    print(report(rows(args.floats, args.strings, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
