"""luigi-checkpoint storage: archives, atomic fsspec writes and their errors."""

from __future__ import annotations

from .archive import audit, dump, freeze, load, read_arrays, read_manifest, verify, write_frozen
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
    MissingMemberError,
    NotAnArchiveError,
    StepExistsError,
    StorageError,
    TruncatedArchiveError,
    UntrustedTypeError,
)
from ._externalize import Frozen
from .snapshot import load_snapshot, save_snapshot, snapshot_from_archive

__all__ = [
    "ArchiveError",
    "ArchiveTooLargeError",
    "BadNpyHeaderError",
    "BadPersistentIdError",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "ChecksumError",
    "CorruptPickleError",
    "Frozen",
    "MissingMemberError",
    "NotAnArchiveError",
    "StepExistsError",
    "StorageError",
    "TruncatedArchiveError",
    "UntrustedTypeError",
    "VerifyReport",
    "audit",
    "dump",
    "freeze",
    "load",
    "load_snapshot",
    "read_arrays",
    "read_manifest",
    "save_snapshot",
    "snapshot_from_archive",
    "verify",
    "write_frozen",
]
