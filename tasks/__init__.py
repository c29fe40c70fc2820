"""Luigi adapters: checkpoint/snapshot targets, the resumable training task, the export task."""

from __future__ import annotations

from .export import ExportSnapshot, RunHasCheckpoint
from .targets import CheckpointTarget, FsspecFileSystem, FsspecTarget, SnapshotTarget
from .training import TrainingInterrupted, TrainingTask

__all__ = [
    "CheckpointTarget",
    "ExportSnapshot",
    "FsspecFileSystem",
    "FsspecTarget",
    "RunHasCheckpoint",
    "SnapshotTarget",
    "TrainingInterrupted",
    "TrainingTask",
]
