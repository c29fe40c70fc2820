"""Every error this library raises, under one base class.

Errors also subclass the builtin that fits, so callers may catch either
``CheckpointNotFoundError`` or ``FileNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ArchiveError",
    "ArchiveTooLargeError",
    "BadNpyHeaderError",
    "BadPersistentIdError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChecksumError",
    "CorruptPickleError",
    "MissingMemberError",
    "NotAnArchiveError",
    "ObjectExistsError",
    "StepExistsError",
    "StorageError",
    "TruncatedArchiveError",
    "UntrustedTypeError",
]


class CheckpointError(Exception):
    """Base class of every error raised by luigi-checkpoint."""


class ArchiveError(CheckpointError, ValueError):
    """An archive or snapshot is malformed; the message names it and the problem."""


class NotAnArchiveError(ArchiveError):
    """The bytes are not a ZIP archive at all."""


class TruncatedArchiveError(ArchiveError):
    """The archive ends before the data its directory promises."""


class MissingMemberError(ArchiveError):
    """A member the archive needs (``pkl``, an array) is absent."""


class BadPersistentIdError(ArchiveError):
    """The pickle references an array member in a way this reader does not know."""


class BadNpyHeaderError(ArchiveError):
    """An NPY member's header is invalid or disagrees with the member's size."""


class ChecksumError(ArchiveError):
    """Stored data does not match its CRC-32 or SHA-256."""


class ArchiveTooLargeError(ArchiveError):
    """A member declares a size beyond what the archive can hold (zip bomb)."""


class CorruptPickleError(ArchiveError):
    """The pickle stream inside the archive is malformed."""


class UntrustedTypeError(CheckpointError, TypeError):
    """The pickle would import globals that are not trusted.

    ``names`` lists every untrusted dotted name, sorted.
    """

    def __init__(self, source: str, names: Iterable[str]) -> None:
        self.source = source
        self.names = sorted(set(names))
        super().__init__(
            f"{source}: refusing to load untrusted types: {', '.join(self.names)} "
            "(pass trusted=[...] or register_trusted(...) to allow them)"
        )


class StorageError(CheckpointError, OSError):
    """Writing or reading through the storage backend failed."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No (good) checkpoint exists where one was asked for."""


class ObjectExistsError(CheckpointError, FileExistsError):
    """An exclusive write found an object at its path (or lost the race for it)."""


class StepExistsError(ObjectExistsError):
    """A checkpoint of this step already exists."""
