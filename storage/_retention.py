"""The retention policy of a checkpoint store, as pure functions of steps and scores.

A step is kept when it is one of the newest ``keep_last``, a multiple of
``keep_every`` or one of the ``keep_best`` by a monitored metric (lowest for
``mode="min"``, highest for ``"max"``; a tie keeps the newer step). Scores come
from the ``metrics`` of each checkpoint's metadata; a checkpoint without the
metric, or whose manifest cannot be read, is never among the best. The store
adds the rule no policy overrides: the newest good archive stays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MODES", "best", "kept", "metric_of"]

MODES = ("min", "max")


def metric_of(metadata: Mapping[str, Any], name: str) -> float | None:
    """The value of metric ``name`` in checkpoint metadata (``metrics`` first,
    then the top level); None if absent, not a number or NaN."""
    metrics = metadata.get("metrics")
    value = metrics.get(name) if isinstance(metrics, Mapping) and name in metrics else metadata.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def best(scores: Mapping[int, float | None], count: int, mode: str) -> list[int]:
    """The ``count`` best steps by score, best first."""
    sign = 1.0 if mode == "min" else -1.0
    scored = [(sign * score, -step) for step, score in scores.items() if score is not None]
    return [-negative for _, negative in sorted(scored)[:count]]


def kept(
    steps: Iterable[int],
    *,
    keep_last: int | None,
    keep_every: int | None,
    best_steps: Iterable[int] = (),
) -> set[int]:
    """The steps the policy keeps (before the newest-good rule)."""
    ordered = sorted(steps)
    keep = set(ordered[-keep_last:]) if keep_last else set()
    if keep_every is not None:
        keep.update(s for s in ordered if s % keep_every == 0)
    keep.update(best_steps)
    return keep
