"""Run records: what a run folder holds, and finding runs by their parameters.

A run folder (``<root>/<task family>/<run id>``) holds ``run.json``, written
whole (:func:`luigi_checkpoint.storage.fs.atomic_write`) by the training task at
every start: the task family, every parameter with its value (significant or
not), the run id, ``total_steps``, the library version, the config files
used, when the run was first created and when this attempt started.
:func:`list_runs` finds the records under a root and adds what the folder says
now: the newest checkpoint step, the newest metrics of the history
(:mod:`.history`) and the run's state.

A run is ``done`` when its newest checkpoint is at ``total_steps``,
``running`` while it wrote a checkpoint or history within ``stale_after``
seconds (the record says how long, from the task's save cadence), and
``stale`` after that: its worker died or stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import _jsonfile, _manifest
from .checkpoints import CheckpointStore
from .fs import Location, resolve, storage_errors
from .history import read_latest

__all__ = ["RECORD", "RunInfo", "differing_parameters", "list_runs", "read_run_record", "write_run_record"]

RECORD = "run.json"
_FORMAT = "luigi-checkpoint/run"
_VERSION = 1


@dataclass(frozen=True)
class RunInfo:
    """One run found by :func:`list_runs`."""

    url: str
    family: str
    run_id: str
    parameters: Mapping[str, str]
    total_steps: int | None
    latest_step: int | None
    metrics: Mapping[str, float]
    created: datetime
    last_activity: datetime
    state: str


def write_run_record(
    run: Location,
    *,
    family: str,
    run_id: str,
    parameters: Mapping[str, str],
    total_steps: int,
    stale_after: float,
    config_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``run.json`` of the run folder ``run`` for an attempt starting now;
    ``created`` is kept from an existing record. Returns the record."""
    previous = read_run_record(run)
    now = datetime.now(timezone.utc).isoformat()
    record = {
        "format": _FORMAT,
        "format_version": _VERSION,
        "family": family,
        "run_id": run_id,
        "parameters": dict(parameters),
        "total_steps": total_steps,
        "stale_after": stale_after,
        "library_version": _manifest.library_version(),
        "config_files": list(config_files),
        "created": previous["created"] if previous else now,
        "started": now,
    }
    _jsonfile.write(run.child(RECORD), record, indent=1)
    return record


def read_run_record(run: Location) -> dict[str, Any] | None:
    """The record of the run folder ``run``; None if it has none (or a bad one, logged)."""
    return _jsonfile.read(run.child(RECORD), _FORMAT)


def list_runs(
    root: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None = None
) -> list[RunInfo]:
    """Every run under ``root`` (a checkpoint root, a task family's folder or
    one run folder), oldest first."""
    top = resolve(root, storage_options)
    fs = top.fs
    fs.invalidate_cache()
    with storage_errors(top.url):
        found = fs.find(top.path, maxdepth=3) if fs.isdir(top.path) else []
    folders = sorted({p.rpartition("/")[0] for p in found if p.rpartition("/")[2] == RECORD})
    runs = [_run_info(Location(fs, folder)) for folder in folders]
    return sorted((r for r in runs if r is not None), key=lambda r: r.created)


def _run_info(run: Location) -> RunInfo | None:
    record = read_run_record(run)
    if record is None:
        return None
    steps = CheckpointStore(run, keep_last=None).steps()
    latest = read_latest(run)
    started = _manifest.parse_time(record["started"])
    last_activity = max(started, latest[2]) if latest else started
    total = record.get("total_steps")
    if steps and total is not None and steps[-1] >= total:
        state = "done"
    elif (datetime.now(timezone.utc) - last_activity).total_seconds() <= record["stale_after"]:
        state = "running"
    else:
        state = "stale"
    return RunInfo(
        url=run.url,
        family=record["family"],
        run_id=record["run_id"],
        parameters=record["parameters"],
        total_steps=total,
        latest_step=steps[-1] if steps else None,
        metrics=latest[1] if latest else {},
        created=_manifest.parse_time(record["created"]),
        last_activity=last_activity,
        state=state,
    )


def differing_parameters(runs: Sequence[RunInfo]) -> list[str]:
    """Names of the parameters whose values are not the same in all ``runs``."""
    names = dict.fromkeys(name for run in runs for name in run.parameters)
    return [n for n in names if len({run.parameters.get(n) for run in runs}) > 1]
