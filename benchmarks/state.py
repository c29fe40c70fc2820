"""The benchmarked training state and the raw baseline that reads and writes its bytes.

The state is a flat ``dict[str, np.ndarray]`` of float32 arrays, the one data
model every peer (pickle, ``np.savez``, safetensors, torch) accepts as is. The
raw baseline writes the arrays' bytes back to back with ``os.write`` and reads
them with one ``readinto`` per array into fresh ``np.empty`` buffers: the cost
of the bytes alone, without any format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

MiB = 1 << 20
DTYPE = np.dtype(np.float32)
_COLUMNS = 1024
_WRITE_LIMIT = 1 << 30  # os.write moves at most ~2 GiB per call on Linux


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the state's arrays (all float32)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes) * DTYPE.itemsize

    def to_json(self) -> str:
        return json.dumps({"names": self.names, "shapes": self.shapes})

    @classmethod
    def from_json(cls, text: str) -> Layout:
        raw = json.loads(text)
        return cls(tuple(raw["names"]), tuple(tuple(s) for s in raw["shapes"]))


def make_layout(total_bytes: int, arrays: int) -> Layout:
    """``arrays`` equal arrays holding ``total_bytes`` together (2-D when it divides)."""
    items = max(1, total_bytes // DTYPE.itemsize // arrays)
    shape = (items // _COLUMNS, _COLUMNS) if items % _COLUMNS == 0 else (items,)
    return Layout(tuple(f"layer{i}" for i in range(arrays)), (shape,) * arrays)


def make_state(layout: Layout, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normal arrays (incompressible, like trained weights)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in zip(layout.names, layout.shapes):
        state[name] = np.empty(shape, DTYPE)
        rng.standard_normal(out=state[name], dtype=DTYPE)
    return state


def write_raw(state: dict[str, np.ndarray], path: str, *, fsync: bool = False) -> None:
    """The raw baseline: every array's bytes with ``os.write``, optionally fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for array in state.values():
            view = memoryview(array).cast("B")
            while view:
                view = view[os.write(fd, view[:_WRITE_LIMIT]) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_raw(layout: Layout, path: str) -> dict[str, np.ndarray]:
    """The raw baseline: one ``readinto`` per array into a new ``np.empty`` buffer."""
    state = {}
    with open(path, "rb", buffering=0) as f:
        for name, shape in zip(layout.names, layout.shapes):
            array = np.empty(shape, DTYPE)
            view = memoryview(array).cast("B")
            while view:
                got = f.readinto(view)
                if not got:
                    raise EOFError(f"{path}: raw state file is truncated")
                view = view[got:]
            state[name] = array
    return state


def warm_page_cache(path: str) -> None:
    """Read a file once so that timed reads find it in the page cache."""
    buffer = bytearray(16 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
