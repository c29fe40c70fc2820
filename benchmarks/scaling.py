"""How save and load scale with the number of arrays and with the bytes, against the peers.

Two series of float32 states, each point saved and loaded by us and by every
installed peer (pickle, safetensors, torch) in this process, one after the
other: the number of arrays at fixed total bytes (the per-array cost), and the
total bytes at a fixed number of arrays (the per-byte cost). Each point shows
our median time over the fastest peer's, for save and for load.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cases import Case, case_named
from .state import MiB, Layout, make_layout, make_state

OURS = {"save": "ours (stored)", "load": "ours"}
PEERS = {
    "save": ("pickle protocol 5", "safetensors", "torch.save"),
    "load": ("pickle", "safetensors", "torch.load"),
}
LOADS = {"ours (stored)": "ours", "pickle protocol 5": "pickle", "safetensors": "safetensors",
         "torch.save": "torch.load"}


@dataclass(frozen=True)
class Point:
    """One state of the series: ``arrays`` arrays holding ``nbytes`` together."""

    series: str
    arrays: int
    nbytes: int

    @property
    def label(self) -> str:
        each = self.nbytes / self.arrays
        size = f"{each / MiB:.0f} MiB" if each >= MiB else f"{each / 1024:.1f} KiB"
        return f"{self.arrays:,} x {size}"


@dataclass(frozen=True)
class Result:
    """Median seconds of each case at one point (None: its module is missing)."""

    point: Point
    times: dict[str, float | None]

    def ratio(self, group: str) -> tuple[float | None, str]:
        """Our time over the fastest peer's, and that peer's name."""
        ours = self.times.get(OURS[group])
        peers = {name: t for name in PEERS[group] if (t := self.times.get(name)) is not None}
        if ours is None or not peers:
            return None, ""
        fastest = min(peers, key=peers.__getitem__)
        return ours / peers[fastest], fastest

    def to_json(self) -> dict[str, Any]:
        save, save_peer = self.ratio("save")
        load, load_peer = self.ratio("load")
        return {
            "series": self.point.series, "arrays": self.point.arrays, "nbytes": self.point.nbytes,
            "median_s": self.times, "save_ratio": save, "save_peer": save_peer,
            "load_ratio": load, "load_peer": load_peer,
        }


def points(counts: list[int], count_bytes: int, sizes: list[int], size_arrays: int) -> list[Point]:
    """The two series: ``counts`` arrays at ``count_bytes``, then ``sizes`` bytes in ``size_arrays``."""
    return [Point("arrays", n, count_bytes) for n in counts] + [
        Point("bytes", size_arrays, size) for size in sizes
    ]


def _timed(repeats: int, before: Callable[[], Any], run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        before()
        gc.collect()
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def measure(point: Point, folder: str, repeats: int, without: tuple[str, ...]) -> Result:
    """Save then load ``point``'s state with us and each peer."""
    layout = make_layout(point.nbytes, point.arrays)
    state = make_state(layout)
    times: dict[str, float | None] = {}
    for save_name, load_name in LOADS.items():
        save, load = case_named("save", save_name), case_named("load", load_name)
        if save.missing(without):
            times[save_name] = times[load_name] = None
            continue
        path = os.path.join(folder, f"scaling-{save.file}")
        times[save_name] = _timed(repeats, lambda: _remove(path), lambda: save.run(state, path))
        times[load_name] = _load_time(load, layout, path, repeats)
        _remove(path)
    return Result(point, times)


def _load_time(case: Case, layout: Layout, path: str, repeats: int) -> float:
    return _timed(repeats, lambda: None, lambda: case.run(layout, path))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def table(results: list[Result]) -> str:
    """The scaling table: per point our save and load over the fastest peer's."""
    header = ("series", "arrays x size", "ours save", "vs fastest peer", "ours load", "vs fastest peer")
    lines = [header]
    for result in results:
        cells = [result.point.series, result.point.label]
        for group in ("save", "load"):
            ours = result.times.get(OURS[group])
            value, peer = result.ratio(group)
            cells += [
                "n/a" if ours is None else f"{ours * 1000:.0f} ms",
                "n/a" if value is None else f"{value:.2f}x {peer}",
            ]
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
