"""How long a save blocks the training loop.

Three ways to get the state out of the loop's way, each a ``(start, finish)``
pair: ``start`` is the stall (timed), ``finish`` waits for any background
work (timed separately, never counted as stall).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

Step = Callable[[int], None]

NAMES = ("np.copyto into preallocated buffers", "ours save(block=False)", "ours save(block=True)")
REQUIRES = {NAMES[0]: (), NAMES[1]: ("luigi_checkpoint.storage.checkpoints",), NAMES[2]: ("luigi_checkpoint.storage.checkpoints",)}


def runner(name: str, state: dict[str, np.ndarray], folder: str) -> tuple[Step, Step]:
    """The ``(start, finish)`` pair of the case ``name``."""
    if name == NAMES[0]:
        buffers = {k: np.empty_like(v) for k, v in state.items()}
        for buffer in buffers.values():
            buffer.fill(0)  # fault the pages in now, as a reused buffer would be

        def copy(step: int) -> None:
            for key, array in state.items():
                np.copyto(buffers[key], array)

        return copy, lambda step: None

    from luigi_checkpoint.storage.checkpoints import CheckpointStore

    block = name == NAMES[2]
    store = CheckpointStore(os.path.join(folder, f"run-block-{block}"), keep_last=1)

    def save(step: int) -> None:
        store.save(step, state, block=block)

    return save, lambda step: store.wait()
