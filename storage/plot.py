"""Pictures of a metric's history: a PNG (matplotlib, the ``plot`` extra) or a
terminal sparkline (no dependency)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from .errors import CheckpointError
from .fs import Location, atomic_write

__all__ = ["PNG_SIZE", "plot_png", "sparkline"]

PNG_SIZE = (960, 540)
"""Width and height in pixels of the pictures :func:`plot_png` writes."""
_DPI = 100
_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """``values`` as one line of block characters, at most ``width`` long (each
    character the mean of its share of the values; NaN as a space)."""
    if not values:
        return ""
    buckets = min(width, len(values))
    means = []
    for i in range(buckets):
        part = [v for v in values[i * len(values) // buckets : (i + 1) * len(values) // buckets] if not math.isnan(v)]
        means.append(sum(part) / len(part) if part else math.nan)
    finite = [m for m in means if not math.isnan(m)]
    if not finite:
        return " " * buckets
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(
        " " if math.isnan(m) else _BLOCKS[min(len(_BLOCKS) - 1, int((m - low) / span * len(_BLOCKS)))]
        for m in means
    )


def plot_png(steps: Sequence[int], values: Sequence[float], dest: Location, *, metric: str, title: str) -> None:
    """Write a line plot of ``metric`` over ``steps`` to ``dest`` as a PNG of
    :data:`PNG_SIZE` pixels, whole or not at all."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise CheckpointError(
            f"{dest.url}: writing a PNG needs matplotlib: pip install 'luigi-checkpoint[plot]' "
            "(without an output file, ckpt plot draws a sparkline in the terminal)"
        ) from None
    figure = Figure(figsize=(PNG_SIZE[0] / _DPI, PNG_SIZE[1] / _DPI), dpi=_DPI)
    axes = figure.add_subplot()
    axes.plot(steps, values, linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    with atomic_write(dest) as f:
        f.write(buffer.getvalue())
