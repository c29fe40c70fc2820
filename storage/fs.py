"""Storage over fsspec: resolving URLs, atomic writes, fresh listings.

Three ways to publish an object whole or not at all, one per kind of store:

* **Local disk** (:class:`fsspec.implementations.local.LocalFileSystem`): write a
  sibling ``.<name>.<uuid>.partial``, fsync it, ``os.replace`` (or ``os.link``
  when the write must not replace anything), then fsync the folder. A crash
  leaves at most a dot-prefixed temp file that no listing treats as data.
* **Object stores with uploads** (s3fs, gcsfs, adlfs: files derived from
  :class:`fsspec.spec.AbstractBufferedFile`): open with ``autocommit=False`` so
  nothing is visible until ``commit()``; ``discard()`` aborts the upload.
  Exclusive writes use mode ``"xb"`` (S3 ``If-None-Match: *``). Never ``mv``:
  on S3 a move is a copy plus a delete.
* **Anything else** (``memory://`` and other in-process stores): a temp sibling
  moved into place with ``fs.mv``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from .errors import CheckpointError, StepExistsError, StorageError

__all__ = [
    "abort_upload",
    "atomic_write",
    "fresh_listing",
    "incomplete_uploads",
    "is_abandoned_temp",
    "is_temp_name",
    "resolve",
    "storage_errors",
    "url_of",
]

logger = logging.getLogger(__name__)

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


def resolve(
    url_or_path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Turn a path or URL plus fsspec ``storage_options`` into ``(fs, path)``."""
    return fsspec.url_to_fs(os.fspath(url_or_path), **(storage_options or {}))


def url_of(fs: AbstractFileSystem, path: str) -> str:
    """The full URL of ``path`` on ``fs`` (plain path for local disk)."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def is_temp_name(name: str) -> bool:
    """Whether a base name is an in-progress temp file of :func:`atomic_write`."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fresh_listing(fs: AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    """List ``path`` with details, bypassing fsspec's listing cache.

    A folder that does not exist lists as empty (object stores have no folders).
    """
    fs.invalidate_cache(path)
    with storage_errors(url_of(fs, path)):
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


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Raise transport failures (OSError, botocore, aiohttp) as :class:`StorageError`
    naming ``url``. Not-found and exists errors and our own errors pass unchanged."""
    try:
        yield
    except (CheckpointError, FileNotFoundError, FileExistsError):
        raise
    except _transport_errors() as exc:
        raise StorageError(f"{url}: {type(exc).__name__}: {exc}") from exc


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
def atomic_write(
    fs: AbstractFileSystem, path: str, *, exclusive: bool = False
) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing so that it appears whole or not at all.

    Yields a binary file. If the body raises, nothing is published, a
    previous object at ``path`` is untouched and no temp file remains.
    With ``exclusive=True`` an existing object is never replaced:
    :class:`StepExistsError` is raised instead.
    """
    if isinstance(fs, LocalFileSystem):
        writer = _local_atomic_write(path, exclusive)
    else:
        writer = _remote_atomic_write(fs, path, exclusive)
    with storage_errors(url_of(fs, path)), writer as f:
        yield f


@contextmanager
def _local_atomic_write(path: str, exclusive: bool) -> Iterator[IO[bytes]]:
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{path}: cannot create folder {folder}: {exc}") from exc
    if exclusive and os.path.lexists(path):
        raise StepExistsError(f"{path}: already exists")
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
                    raise StepExistsError(f"{path}: already exists") from None
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
    fs: AbstractFileSystem, path: str, exclusive: bool
) -> Iterator[IO[bytes]]:
    parent = fs._parent(path)
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    if exclusive and _exists_fresh(fs, path):
        raise StepExistsError(f"{url_of(fs, path)}: already exists")
    # Opening the temp sibling tells which kind of file this store gives:
    # a buffered upload sends nothing before its first flush, so it is
    # dropped and the real path is opened uncommitted instead.
    temp = _temp_sibling(path)
    f = fs.open(temp, "wb", autocommit=False)
    if isinstance(f, AbstractBufferedFile):
        _drop(f)
        before = _uploads_of(fs, path)
        upload = fs.open(path, "xb" if exclusive else "wb", autocommit=False)
        with _uploading(fs, path, upload, before, exclusive) as out:
            yield out
    else:
        with _moved_into_place(fs, temp, f, path, exclusive) as out:
            yield out


def incomplete_uploads(fs: AbstractFileSystem, prefix: str) -> list[tuple[str, str]]:
    """``(path, upload id)`` of the S3 multipart uploads in progress whose key
    starts with ``prefix`` (``bucket/key-prefix``); empty on stores without them.

    One listing: at most 1000 uploads, by key and then age, so a sweep
    that aborts what it finds goes through any number of them over calls.
    """
    call_s3 = getattr(fs, "call_s3", None)
    if call_s3 is None:
        return []
    bucket, _, key_prefix = prefix.partition("/")
    with storage_errors(url_of(fs, prefix)):
        listing = call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix)
    return [(f"{bucket}/{u['Key']}", u["UploadId"]) for u in listing.get("Uploads", [])]


def abort_upload(fs: AbstractFileSystem, path: str, upload_id: str) -> None:
    """Abort the S3 multipart upload ``upload_id`` of ``path``; its parts are freed.

    An upload already gone (aborted or completed meanwhile) is not an error.
    """
    bucket, _, key = path.partition("/")
    with storage_errors(url_of(fs, path)), suppress(FileNotFoundError):
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)


def _uploads_of(fs: AbstractFileSystem, path: str) -> set[str] | None:
    """Ids of the S3 multipart uploads in progress for ``path`` (None elsewhere)."""
    if getattr(fs, "call_s3", None) is None:
        return None
    return {upload_id for key, upload_id in incomplete_uploads(fs, path) if key == path}


def _abort_stray_uploads(fs: AbstractFileSystem, path: str, before: set[str] | None) -> None:
    """Abort the S3 multipart uploads of ``path`` begun since ``before`` was listed.

    A ``CreateMultipartUpload`` whose answer was lost leaves an upload the
    file object never heard of; it would linger (and be billed). Uploads that
    existed before the write are left alone; one that another writer of the
    same path began meanwhile cannot be told apart and is aborted too (that
    writer's save then fails cleanly and its previous object stays). A create
    request still in flight now lands later; the store's prune aborts it once
    the step is saved (:meth:`luigi_checkpoint.storage.checkpoints.CheckpointStore.prune`).
    """
    if before is None:
        return
    try:
        for upload_id in _uploads_of(fs, path) or set():
            if upload_id not in before:
                abort_upload(fs, path, upload_id)
    except Exception as exc:  # the write's own failure is the one to raise
        logger.warning("%s: could not abort incomplete uploads: %s", url_of(fs, path), exc)


def _drop(f: AbstractBufferedFile) -> None:
    """Abort an uncommitted upload; closed, so that ``__del__`` sends nothing."""
    try:
        f.discard()
    except Exception as exc:  # the write's own failure is the one to raise
        logger.warning("%s: could not abort the upload: %s", f.path, exc)
    finally:
        f.closed = True


@contextmanager
def _uploading(
    fs: AbstractFileSystem, path: str, f: AbstractBufferedFile, before: set[str] | None, exclusive: bool
) -> Iterator[IO[bytes]]:
    try:
        yield f
        f.close()
        try:
            f.commit()
        except FileExistsError:
            raise StepExistsError(f"{url_of(fs, path)}: already exists") from None
    except BaseException as exc:
        upload_id = (getattr(f, "mpu", None) or {}).get("UploadId")
        lost = exclusive and isinstance(exc, Exception) and not isinstance(exc, StepExistsError)
        lost = lost and _lost_race(fs, path, upload_id)
        # With a known upload id only that upload is aborted; without one the
        # creation itself failed, maybe after the server made uploads whose
        # answers were lost: those are swept.
        _drop(f)
        if upload_id is None:
            _abort_stray_uploads(fs, path, before)
        if lost:
            raise StepExistsError(f"{url_of(fs, path)}: another writer saved it while this upload ran") from exc
        raise
    finally:
        fs.invalidate_cache(path)


def _lost_race(fs: AbstractFileSystem, path: str, upload_id: str | None) -> bool:
    """Whether an exclusive upload of ``path`` failed because another writer won:
    ``path`` exists now, or the upload was aborted under it (a prune aborts the
    uploads of steps that exist, and that archive may be pruned since)."""
    try:
        if _exists_fresh(fs, path):
            return True
        return upload_id is not None and upload_id not in (_uploads_of(fs, path) or set())
    except Exception:  # the write's own failure is the one to raise
        return False


@contextmanager
def _moved_into_place(
    fs: AbstractFileSystem, temp: str, f: IO[bytes], path: str, exclusive: bool
) -> Iterator[IO[bytes]]:
    try:
        with f:
            yield f
        if exclusive and _exists_fresh(fs, path):
            raise StepExistsError(f"{url_of(fs, path)}: already exists")
        fs.mv(temp, path)
    except BaseException:
        if _exists_fresh(fs, temp):
            fs.rm(temp)
        raise


def _exists_fresh(fs: AbstractFileSystem, path: str) -> bool:
    fs.invalidate_cache(path)
    return fs.exists(path)
