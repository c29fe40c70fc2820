"""Classes for snapshot and CLI tests: a user model the default trust list does
not know, and an object whose unpickling would leave a trace."""

from __future__ import annotations

from typing import Any

import numpy as np

UNPICKLED: list[str] = []


class Model:
    """A user class: pickles reference ``tests.helpers_snapshot.Model``."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.W = rng.standard_normal((8, 4))
        self.b = np.arange(4, dtype=np.float32)


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Tripwire:
    """Unpickling it calls :func:`_record_unpickling`, which leaves a trace."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record_unpickling, ("tripwire",))


def training_state(seed: int = 0) -> dict[str, Any]:
    """A checkpointable state whose pickle names untrusted globals."""
    return {"model": Model(seed), "tripwire": Tripwire(), "step": seed}
