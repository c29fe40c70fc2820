"""Training states that are a pure function of their step.

A campaign never has to remember what was saved: the state of step ``n`` is
``make_state(n, nbytes)``, so any restored state can be recomputed and compared
exactly. Every array element depends on the step, the array and its position,
so a checkpoint mixing two steps, a shifted or a partly zero array all show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _ramp(step: int, salt: int, count: int, dtype: str) -> np.ndarray:
    base = np.uint64((step * 1_000_003 + salt * 7919) % 2**61)
    values = np.arange(count, dtype=np.uint64)
    values *= _MIX
    values += base
    if dtype == "float64":  # finite floats in [1, 2), made with bit operations only
        values >>= np.uint64(12)
        values |= np.uint64(0x3FF0000000000000)
        return values.view(np.float64)
    return values.view(np.int64) if dtype == "int64" else values.astype(dtype)


def make_state(step: int, nbytes: int) -> dict[str, Any]:
    """The state of ``step``: about ``nbytes`` of arrays in a nested training-like structure."""
    big = max(nbytes // 8 // 4, 1)
    return {
        "step": step,
        "model": {
            "layers": [_ramp(step, i, big, "float64") for i in range(3)],
            "bias": _ramp(step, 10, 1000, "float32"),
        },
        "optimizer": {"moments": (_ramp(step, 20, big, "int64"), _ramp(step, 21, 17, "uint8"))},
        "rng": np.random.default_rng(step),
        "history": [float(step) / 3, f"step {step}", {"nested": [step, (step, None)]}],
        "empty": np.zeros((0, 3)),
    }


def mismatch(state: Any, step: int, nbytes: int) -> str | None:
    """None if ``state`` equals ``make_state(step, nbytes)`` exactly, else what differs."""
    return diff(state, make_state(step, nbytes))


def diff(actual: Any, expected: Any, where: str = "state") -> str | None:
    """None if two nested states are exactly equal (types, dtypes, bits), else where they differ."""
    if type(actual) is not type(expected):
        return f"{where}: {type(actual).__name__} instead of {type(expected).__name__}"
    if isinstance(expected, dict):
        if actual.keys() != expected.keys():
            return f"{where}: keys {sorted(actual)} instead of {sorted(expected)}"
        items = [(actual[k], expected[k], f"{where}[{k!r}]") for k in expected]
    elif isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            return f"{where}: length {len(actual)} instead of {len(expected)}"
        items = [(a, e, f"{where}[{i}]") for i, (a, e) in enumerate(zip(actual, expected))]
    elif isinstance(expected, np.ndarray):
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            return f"{where}: {actual.dtype}{actual.shape} instead of {expected.dtype}{expected.shape}"
        if not np.array_equal(actual, expected):
            wrong = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
            return f"{where}: {wrong.size} elements differ, first at {wrong[0]}"
        return None
    elif isinstance(expected, np.random.Generator):
        same = actual.bit_generator.state == expected.bit_generator.state
        return None if same else f"{where}: generator state differs"
    else:
        return None if actual == expected else f"{where}: {actual!r} instead of {expected!r}"
    for a, e, w in items:
        problem = diff(a, e, w)
        if problem:
            return problem
    return None
