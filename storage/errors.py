"""Every error this library raises, under one base class.

Errors also subclass the builtin that fits, so callers may catch either
``CheckpointNotFoundError`` or ``FileNotFoundError``.

An :class:`ArchiveError` means *damaged*: the bytes are wrong (CRC, structure,
truncation), and a store may skip such an archive for an older one. An
:class:`UnloadableArchiveError` means the bytes are good but this code cannot
build the state they hold (a class that moved, raises or is not trusted, a
newer format): nothing may fall back past, prune or restart over it.
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
    "HiddenArraysError",
    "MissingMemberError",
    "NotAnArchiveError",
    "ObjectExistsError",
    "StepExistsError",
    "StorageError",
    "TruncatedArchiveError",
    "UnloadableArchiveError",
    "UnsupportedArrayError",
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


class UnloadableArchiveError(CheckpointError):
    """The archive's bytes are good, but this code cannot build its state; the
    message names the archive, the class, the original exception and the way out
    (``renames=``, ``trusted=``, a fix to the class, ``unsafe=True``)."""


class UntrustedTypeError(UnloadableArchiveError, TypeError):
    """The pickle would import globals that are not trusted.

    ``names`` lists every untrusted dotted name, sorted.
    """

    def __init__(
        self,
        source: str,
        names: Iterable[str],
        way_out: str = "pass trusted=[...] or register_trusted(...) to allow them",
        *,
        refusing: str = "load",
    ) -> None:
        self.source = source
        self.names = sorted(set(names))
        super().__init__(
            f"{source}: refusing to {refusing} untrusted types: {', '.join(self.names)} ({way_out})"
        )


class UnsupportedArrayError(CheckpointError, TypeError):
    """A framework array cannot be saved as an NPY member (a sparse or quantized
    tensor, a dtype with no numpy layout); the message says how to convert it."""


class HiddenArraysError(CheckpointError, ValueError):
    """An archive's pickle holds array data that is not an array member (an
    object array, an ndarray subclass, a tensor pickled by its framework), so
    a numpy-only snapshot of its members would silently lack it."""


class StorageError(CheckpointError, OSError):
    """Writing or reading through the storage backend failed."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No (good) checkpoint exists where one was asked for."""


class ObjectExistsError(CheckpointError, FileExistsError):
    """An exclusive write found an object at its path (or lost the race for it)."""


class StepExistsError(ObjectExistsError):
    """A checkpoint of this step already exists."""


class TotalStepsError(CheckpointError, ValueError):
    """A training task's ``total_steps`` is below its run's newest checkpoint."""


class TransferOptionError(CheckpointError, ValueError):
    """A ``transfer_concurrency`` or ``transfer_part_size`` storage option is invalid."""
