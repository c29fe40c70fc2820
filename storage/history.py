"""Metric history: every metric of every step of a run, kept beside its checkpoints.

Checkpoints are pruned, so their manifests cannot hold a run's history. The
history lives in the run folder's ``history/`` subfolder as small JSON
segments, ``steps-<first step>-<last step>.json`` (12-digit steps), each written
whole or not at all (:func:`luigi_checkpoint.storage.fs.atomic_write`). A
writer (the training task) writes the steps since its last segment before each
checkpoint, and whenever it holds many unwritten steps, so a crash loses at
most the steps after the newest checkpoint: exactly those the next attempt
recomputes. Segments of several attempts may overlap; the reader merges them
in the order they were written, so a recomputed step replaces what an earlier
attempt wrote of it. Pruning never touches the history.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from . import _jsonfile
from .fs import Location, fresh_listing

__all__ = ["FOLDER", "History", "read_history", "read_latest", "write_history"]

FOLDER = "history"
_FORMAT = "luigi-checkpoint/history"
_VERSION = 1
_SEGMENT = re.compile(r"steps-(\d{12})-(\d{12})\.json")


@dataclass(frozen=True)
class History:
    """The metrics of a run by step, ascending."""

    steps: tuple[int, ...]
    metrics: tuple[Mapping[str, float], ...]

    def names(self) -> list[str]:
        """Every metric name, in the order first seen."""
        return list(dict.fromkeys(name for row in self.metrics for name in row))

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of the steps that have metric ``name``."""
        pairs = [(s, row[name]) for s, row in zip(self.steps, self.metrics) if name in row]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def latest(self) -> tuple[int, Mapping[str, float]] | None:
        """The newest step and its metrics; None for an empty history."""
        return (self.steps[-1], self.metrics[-1]) if self.steps else None


def write_history(run: Location, records: Iterable[tuple[int, Mapping[str, float]]]) -> None:
    """Write the metrics of some steps (``(step, {name: value})``, ascending) as
    one segment of ``run``'s history; nothing for no records."""
    rows = [[int(step), {str(k): float(v) for k, v in metrics.items()}] for step, metrics in records]
    if not rows:
        return
    segment = {
        "format": _FORMAT,
        "format_version": _VERSION,
        "written_ns": time.time_ns(),
        "steps": rows,
    }
    name = f"steps-{rows[0][0]:012d}-{rows[-1][0]:012d}.json"
    _jsonfile.write(run.child(FOLDER).child(name), segment)


def read_history(run: Location) -> History:
    """The merged history of ``run`` (empty if it has none)."""
    folder = run.child(FOLDER)
    segments = [s for name in _segment_names(folder) if (s := _jsonfile.read(folder.child(name), _FORMAT))]
    merged: dict[int, Mapping[str, float]] = {}
    for segment in sorted(segments, key=lambda s: s["written_ns"]):
        merged.update((int(step), metrics) for step, metrics in segment["steps"])
    steps = sorted(merged)
    return History(tuple(steps), tuple(merged[s] for s in steps))


def read_latest(run: Location) -> tuple[int, Mapping[str, float], datetime] | None:
    """``(step, metrics, written)`` of the newest step in ``run``'s history,
    reading one segment (the one reaching furthest); None for no history."""
    folder = run.child(FOLDER)
    for name in sorted(_segment_names(folder), key=lambda n: _SEGMENT.fullmatch(n).group(2), reverse=True):
        segment = _jsonfile.read(folder.child(name), _FORMAT)
        if segment and segment["steps"]:
            step, metrics = segment["steps"][-1]
            return int(step), metrics, _time(segment["written_ns"])
    return None


def _segment_names(folder: Location) -> list[str]:
    names = (entry["name"].rstrip("/").rpartition("/")[2] for entry in fresh_listing(folder)
             if entry.get("type") == "file")
    return [name for name in names if _SEGMENT.fullmatch(name)]


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)
