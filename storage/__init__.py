"""luigi-checkpoint storage: checkpoint archives, their store, numpy-only
snapshots and atomic fsspec writes; usable without Luigi.

The public modules are :mod:`.archive`, :mod:`.checkpoints`, :mod:`.snapshot`,
:mod:`.fs`, :mod:`.runs`, :mod:`.history`, :mod:`.errors` and :mod:`.cli` (``ckpt``); modules whose names
start with an underscore are internal.
"""

from __future__ import annotations

from ._trust import Audit, register_trusted
from .archive import Archive, audit, dump, load, open_archive, read_arrays, read_manifest, verify
from .checkpoints import CheckpointInfo, CheckpointStore, VerifyReport
from .errors import (
    ArchiveError,
    ArchiveTooLargeError,
    BadNpyHeaderError,
    BadPersistentIdError,
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumError,
    CorruptPickleError,
    HiddenArraysError,
    MissingMemberError,
    NotAnArchiveError,
    ObjectExistsError,
    StepExistsError,
    StorageError,
    TotalStepsError,
    TruncatedArchiveError,
    UnloadableArchiveError,
    UnsupportedArrayError,
    UntrustedTypeError,
)
from .fs import Location, resolve
from .history import History, read_history
from .runs import RunInfo, list_runs
from .snapshot import load_snapshot, read_snapshot_manifest, save_snapshot, snapshot_from_archive

__all__ = [
    "Archive",
    "ArchiveError",
    "ArchiveTooLargeError",
    "Audit",
    "BadNpyHeaderError",
    "BadPersistentIdError",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "ChecksumError",
    "CorruptPickleError",
    "HiddenArraysError",
    "History",
    "Location",
    "MissingMemberError",
    "NotAnArchiveError",
    "ObjectExistsError",
    "RunInfo",
    "StepExistsError",
    "StorageError",
    "TotalStepsError",
    "TruncatedArchiveError",
    "UnloadableArchiveError",
    "UnsupportedArrayError",
    "UntrustedTypeError",
    "VerifyReport",
    "audit",
    "dump",
    "list_runs",
    "load",
    "load_snapshot",
    "open_archive",
    "read_arrays",
    "read_history",
    "read_manifest",
    "read_snapshot_manifest",
    "register_trusted",
    "resolve",
    "save_snapshot",
    "snapshot_from_archive",
    "verify",
]
