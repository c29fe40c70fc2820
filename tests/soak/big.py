"""Big archives: members past the 4 GiB ZIP64 limit and past each 16 MiB block
of the reader, written and read back through every reader we promise.

Each trial dumps one array of ``size`` bytes (a repeating pattern, so DEFLATE
stays cheap on disk yet must expand every block), then checks that our
``load``, ``verify`` and zipfile's CRC check (``testzip``) all accept it and that
the loaded array equals the original. An array of the largest size is held
in memory twice at most (the state and what ``load`` returns).
"""

from __future__ import annotations

import time
import zipfile

import numpy as np

from luigi_checkpoint.storage.archive import dump, load, verify

from .env import SoakEnv
from .report import CampaignResult, Tally
from .scale import Scale


CHUNK = 64 << 20


def _pattern(size: int) -> np.ndarray:
    return np.resize(np.arange(251, dtype=np.uint8), size)  # period 251: no block boundary aligns


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal arrays, compared a chunk at a time (no second array of the full size)."""
    return a.shape == b.shape and a.dtype == b.dtype and all(
        np.array_equal(a[i : i + CHUNK], b[i : i + CHUNK]) for i in range(0, a.size, CHUNK)
    )


def run(scale: Scale, env: SoakEnv) -> CampaignResult:
    tally = Tally("big")
    folder = env.folder("big")
    for size in scale.big_bytes:
        for compression in ("deflate", "stored"):
            path = folder / f"{compression}-{size}.zip"
            state = {"w": _pattern(size)}
            started = time.monotonic()
            problems = []
            try:
                dump(state, str(path), compression=compression)
                problems += [f"verify: {size} bytes {compression}: {p}" for p in verify(str(path))]
                with zipfile.ZipFile(path) as zf:
                    bad = zf.testzip()
                if bad is not None:
                    problems.append(f"zipfile: {size} bytes {compression}: CRC of {bad} fails")
                if not _same(load(str(path))["w"], state["w"]):
                    problems.append(f"load: {size} bytes {compression}: arrays differ")
            except Exception as exc:  # any failure of one size is a finding, the run goes on
                problems.append(f"{type(exc).__name__}: {size} bytes {compression}: {exc}")
            tally.time(time.monotonic() - started)
            tally.trial(problems, lost=bool(problems))
            path.unlink(missing_ok=True)
    return tally.result()
