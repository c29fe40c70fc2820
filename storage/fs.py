"""Storage over fsspec: resolving URLs, atomic writes, fresh listings.

Three ways to publish an object whole or not at all, one per kind of store:

* **Local disk** (:class:`fsspec.implementations.local.LocalFileSystem`): write a
  sibling ``.<name>.<uuid>.partial``, fsync it, ``os.replace`` (or ``os.link``
  when the write must not replace anything), then fsync the folder. A crash
  leaves at most a dot-prefixed temp file that no listing treats as data.
* **Object stores with uploads** (s3fs, gcsfs, adlfs: files derived from
  :class:`fsspec.spec.AbstractBufferedFile`): an uncommitted upload, committed
  on success and aborted on failure (:mod:`._s3`, which also keeps S3's
  multipart uploads from lingering). Exclusive writes use mode ``"xb"`` (S3
  ``If-None-Match: *``). Never ``mv``: on S3 a move is a copy plus a delete.
* **Anything else** (``memory://`` and other in-process stores): a temp sibling
  moved into place with ``fs.mv``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from . import _s3
from ._transfer import Transfer
from .errors import CheckpointError, ObjectExistsError, StorageError

__all__ = [
    "Location",
    "as_storage_error",
    "atomic_write",
    "fresh_listing",
    "is_abandoned_temp",
    "is_temp_name",
    "resolve",
    "storage_errors",
    "url_of",
]

TEMP_SUFFIX = ".partial"
TEMP_GRACE = 10.0
"""Seconds a local temp file is left alone even when unlocked (its writer may
have created it but not yet locked it)."""
TEMP_MAX_AGE = 3600.0
"""Seconds after which a temp file on a store without locks counts as abandoned."""

# Transport failures of the backends, by module; only those already imported
# can have been raised, so nothing is imported to check for them.
_TRANSPORT_ERRORS = {
    "botocore.exceptions": ("BotoCoreError", "ClientError"),
    "aiohttp": ("ClientError",),
}


@dataclass(frozen=True)
class Location:
    """A path on one fsspec filesystem: a URL and its ``storage_options``,
    resolved once (by :func:`resolve`) and handed down from there.

    Every function that takes a path or URL takes a location too.
    ``transfer`` says how large objects move on object stores (:mod:`._transfer`).
    """

    fs: AbstractFileSystem
    path: str
    transfer: Transfer = Transfer()

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        """The full URL (a plain path on local disk)."""
        return url_of(self.fs, self.path)

    @property
    def name(self) -> str:
        """The last part of the path."""
        return self.path.rstrip("/").rpartition("/")[2]

    def child(self, name: str) -> Location:
        """The location of ``name`` inside this folder."""
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", self.transfer)


def resolve(
    target: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None = None
) -> Location:
    """Turn a path or URL plus fsspec ``storage_options`` into a :class:`Location`
    (a location is returned as it is; it takes no options).

    Two keys of ``storage_options`` are ours, not fsspec's: ``transfer_concurrency``
    (requests at once per object, default 8) and ``transfer_part_size`` (bytes
    per upload part and the least per range read, default 16 MiB, at least
    5 MiB) of large objects on object stores; see :mod:`._transfer`.
    """
    if isinstance(target, Location):
        if storage_options:
            raise TypeError(f"{target.url}: storage_options go with a URL, not a resolved Location")
        return target
    transfer, options = Transfer.from_options(storage_options or {})
    fs, path = fsspec.url_to_fs(os.fspath(target), **options)
    return Location(fs, path, transfer)


def url_of(fs: AbstractFileSystem, path: str) -> str:
    """The full URL of ``path`` on ``fs`` (plain path for local disk)."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def is_temp_name(name: str) -> bool:
    """Whether a base name is an in-progress temp file of :func:`atomic_write`."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fresh_listing(folder: Location) -> list[dict[str, Any]]:
    """List ``folder`` with details, bypassing fsspec's listing cache.

    A folder that does not exist lists as empty (object stores have no folders).
    """
    fs, path = folder.fs, folder.path
    fs.invalidate_cache(path)
    with storage_errors(folder.url):
        try:
            return fs.ls(path, detail=True)
        except FileNotFoundError:
            return []


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    for module, names in _TRANSPORT_ERRORS.items():
        if module in sys.modules:
            errors += [getattr(sys.modules[module], name) for name in names]
    return tuple(errors)


def storage_errors(url: str) -> AbstractContextManager[None]:
    """Raise transport failures (OSError, botocore, aiohttp) as :class:`StorageError`
    naming ``url``. Not-found and exists errors and our own errors pass unchanged."""
    return _StorageErrors(url)


class _StorageErrors:
    """:func:`storage_errors` as a class: it is entered once per array read."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        failure = as_storage_error(self.url, exc)
        if failure is not None:
            raise failure from exc
        return False


def as_storage_error(url: str, exc: BaseException | None) -> StorageError | None:
    """``exc`` as the :class:`StorageError` :func:`storage_errors` raises, or
    None if it is no transport failure (or not-found, exists, one of ours)."""
    if exc is None or isinstance(exc, (CheckpointError, FileNotFoundError, FileExistsError)):
        return None
    if isinstance(exc, _transport_errors()):
        return StorageError(f"{url}: {type(exc).__name__}: {exc}")
    return None


def is_abandoned_temp(fs: AbstractFileSystem, entry: dict[str, Any]) -> bool:
    """Whether a listed temp file of :func:`atomic_write` has no live writer.

    Local writers hold an exclusive ``flock`` on their temp file until they
    finish, and the kernel drops it when a writer dies: an unlocked temp file
    older than :data:`TEMP_GRACE` is abandoned. Elsewhere only age tells
    (:data:`TEMP_MAX_AGE`).
    """
    name = entry["name"].rstrip("/").rpartition("/")[2]
    if not is_temp_name(name):
        return False
    age = time.time() - _modified(entry)
    if not isinstance(fs, LocalFileSystem):
        return age > TEMP_MAX_AGE
    if age <= TEMP_GRACE:
        return False
    try:
        with open(entry["name"], "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except FileNotFoundError:
        return False
    return True


def _modified(entry: dict[str, Any]) -> float:
    stamp = entry.get("mtime", entry.get("created", entry.get("LastModified")))
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return float(stamp) if stamp is not None else time.time()


def _temp_sibling(path: str) -> str:
    folder, _, name = path.rpartition("/")
    temp = f".{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    return f"{folder}/{temp}" if folder else temp


@contextmanager
def atomic_write(target: Location, *, exclusive: bool = False) -> Iterator[IO[bytes]]:
    """Open ``target`` for writing so that it appears whole or not at all.

    Yields a binary file. If the body raises, nothing is published, a
    previous object at ``target`` is untouched and no temp file remains.
    With ``exclusive=True`` an existing object is never replaced:
    :class:`ObjectExistsError` is raised instead.
    """
    fs, path = target.fs, target.path
    if isinstance(fs, LocalFileSystem):
        writer = _local_atomic_write(path, exclusive)
    else:
        writer = _remote_atomic_write(fs, path, exclusive, target.transfer)
    with storage_errors(target.url), writer as f:
        yield f


@contextmanager
def _local_atomic_write(path: str, exclusive: bool) -> Iterator[IO[bytes]]:
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{path}: cannot create folder {folder}: {exc}") from exc
    if exclusive and os.path.lexists(path):
        raise ObjectExistsError(f"{path}: already exists")
    temp = _temp_sibling(path)
    try:
        with open(temp, "xb") as f:
            # Held until the temp name is gone: released when the writer dies.
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield f
            f.flush()
            os.fsync(f.fileno())
            if exclusive:
                try:
                    os.link(temp, path)
                except FileExistsError:
                    raise ObjectExistsError(f"{path}: already exists") from None
                os.unlink(temp)
            else:
                os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _remote_atomic_write(
    fs: AbstractFileSystem, path: str, exclusive: bool, transfer: Transfer
) -> Iterator[IO[bytes]]:
    parent = fs._parent(path)
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    if exclusive and _exists_fresh(fs, path):
        raise ObjectExistsError(f"{url_of(fs, path)}: already exists")
    # Opening the temp sibling tells which kind of file this store gives:
    # a buffered upload sends nothing before its first flush, so it is
    # dropped and the real path is opened uncommitted instead.
    temp = _temp_sibling(path)
    f = fs.open(temp, "wb", autocommit=False)
    if isinstance(f, AbstractBufferedFile):
        _s3.discard(f)
        with _s3.uploading(fs, path, exclusive=exclusive, transfer=transfer) as out:
            yield out
    else:
        with _moved_into_place(fs, temp, f, path, exclusive) as out:
            yield out


@contextmanager
def _moved_into_place(
    fs: AbstractFileSystem, temp: str, f: IO[bytes], path: str, exclusive: bool
) -> Iterator[IO[bytes]]:
    try:
        with f:
            yield f
        if exclusive and _exists_fresh(fs, path):
            raise ObjectExistsError(f"{url_of(fs, path)}: already exists")
        fs.mv(temp, path)
    except BaseException:
        if _exists_fresh(fs, temp):
            fs.rm(temp)
        raise


def _exists_fresh(fs: AbstractFileSystem, path: str) -> bool:
    fs.invalidate_cache(path)
    return fs.exists(path)
