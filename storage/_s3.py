"""Uploads to object stores: commit on success, abort on failure, and the S3
multipart bookkeeping that keeps a failed or lost write from leaving anything.

An object store's file (fsspec's :class:`~fsspec.spec.AbstractBufferedFile`:
s3fs, gcsfs, adlfs) opened with ``autocommit=False`` publishes nothing until
``commit()``; ``discard()`` aborts it. On S3 the upload is a multipart upload
with an id, and these things need care:

* A ``CreateMultipartUpload`` whose answer was lost leaves an upload the file
  never heard of: a failed write without an upload id aborts the uploads of its
  key begun since it started (:func:`uploading`).
* An exclusive write (``If-None-Match: *``) completes holding a claim
  (:mod:`._s3claim`): the conditional complete is not atomic on every server.
* An exclusive write that fails because another writer
  published the key meanwhile, or had its upload aborted by a sweep because the
  key exists, lost a race: it raises :class:`ObjectExistsError`, not a
  transport error.
* A killed writer, or a create request landing after its write gave up, leaves
  an incomplete upload (invisible, billed). Exclusive uploads of a key that
  exists can never complete, so :func:`abort_uploads_of_existing` aborts them;
  the checkpoint store calls it on every prune. Uploads of other keys may be
  live writes and are left alone (a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` covers keys never written again).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from ._s3claim import claimed
from ._s3upload import S3Upload
from ._transfer import Transfer
from .errors import ObjectExistsError

__all__ = ["abort_upload", "abort_uploads_of_existing", "incomplete_uploads", "uploading"]

logger = logging.getLogger(__name__)


def _is_s3(fs: AbstractFileSystem) -> bool:
    return getattr(fs, "call_s3", None) is not None


def incomplete_uploads(fs: AbstractFileSystem, prefix: str) -> list[tuple[str, str]]:
    """``(path, upload id)`` of the S3 multipart uploads in progress whose key
    starts with ``prefix`` (``bucket/key-prefix``); empty on stores without them.

    One listing: at most 1000 uploads, by key and then age, so a sweep that
    aborts what it finds goes through any number of them over calls.
    """
    if not _is_s3(fs):
        return []
    bucket, _, key_prefix = prefix.partition("/")
    listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix)
    return [(f"{bucket}/{u['Key']}", u["UploadId"]) for u in listing.get("Uploads", [])]


def abort_upload(fs: AbstractFileSystem, path: str, upload_id: str) -> None:
    """Abort the S3 multipart upload ``upload_id`` of ``path``; its parts are freed.

    An upload already gone (aborted or completed meanwhile) is not an error.
    """
    bucket, _, key = path.partition("/")
    with suppress(FileNotFoundError):
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)


def abort_uploads_of_existing(fs: AbstractFileSystem, prefix: str, existing: Container[str]) -> None:
    """Abort the incomplete uploads under ``prefix`` whose base name is in
    ``existing`` (objects that exist: an exclusive upload of them cannot complete)."""
    for path, upload_id in incomplete_uploads(fs, prefix):
        if path.rpartition("/")[2] in existing:
            logger.info("aborting the incomplete upload %s of %s", upload_id, fs.unstrip_protocol(path))
            abort_upload(fs, path, upload_id)


def _uploads_of(fs: AbstractFileSystem, path: str) -> set[str] | None:
    """Ids of the S3 multipart uploads in progress for ``path`` (None elsewhere)."""
    if not _is_s3(fs):
        return None
    return {upload_id for key, upload_id in incomplete_uploads(fs, path) if key == path}


def _abort_stray_uploads(fs: AbstractFileSystem, path: str, before: set[str] | None) -> None:
    """Abort the S3 multipart uploads of ``path`` begun since ``before`` was listed.

    Uploads that existed before the write are left alone; one that another
    writer of the same path began meanwhile cannot be told apart and is aborted
    too (that writer's write then fails cleanly and its previous object stays).
    """
    if before is None:
        return
    try:
        for upload_id in _uploads_of(fs, path) or set():
            if upload_id not in before:
                abort_upload(fs, path, upload_id)
    except Exception as exc:  # the write's own failure is the one to raise
        logger.warning("%s: could not abort incomplete uploads: %s", fs.unstrip_protocol(path), exc)


def discard(f: AbstractBufferedFile | S3Upload) -> None:
    """Abort an uncommitted upload; marked closed, so that closing it later
    (``__del__`` included) uploads nothing more."""
    try:
        f.discard()
    except Exception as exc:  # the write's own failure is the one to raise
        logger.warning("%s: could not abort the upload: %s", f.path, exc)
    finally:
        f.closed = True


@contextmanager
def uploading(
    fs: AbstractFileSystem, path: str, *, exclusive: bool, transfer: Transfer = Transfer()
) -> Iterator[IO[bytes]]:
    """Write ``path`` as an uncommitted upload, committed when the body succeeds.

    With ``exclusive=True`` an existing object is never replaced: the upload
    is conditional and a lost race raises :class:`ObjectExistsError`. On S3
    the parts go up concurrently, as ``transfer`` says (:mod:`._s3upload`).
    """
    before = _uploads_of(fs, path)
    f: Any = (
        S3Upload(fs, path, exclusive=exclusive, transfer=transfer)
        if _is_s3(fs)
        else fs.open(path, "xb" if exclusive else "wb", autocommit=False)
    )
    try:
        yield f
        f.close()
        try:
            if exclusive and _is_s3(fs):
                with claimed(fs, path):
                    f.commit()
            else:
                f.commit()
        except FileExistsError:
            raise ObjectExistsError(f"{fs.unstrip_protocol(path)}: already exists") from None
    except BaseException as exc:
        # s3fs keeps the multipart upload's answer in ``mpu``; no id means the
        # creation itself failed, maybe after the server made uploads whose
        # answers were lost: those are swept.
        upload_id = (getattr(f, "mpu", None) or {}).get("UploadId")
        lost = exclusive and isinstance(exc, Exception) and not isinstance(exc, ObjectExistsError)
        lost = lost and _lost_race(fs, path, upload_id)
        discard(f)
        if upload_id is None:
            _abort_stray_uploads(fs, path, before)
        if lost:
            raise ObjectExistsError(
                f"{fs.unstrip_protocol(path)}: another writer wrote it while this upload ran"
            ) from exc
        raise
    finally:
        fs.invalidate_cache(path)


def _lost_race(fs: AbstractFileSystem, path: str, upload_id: str | None) -> bool:
    """Whether an exclusive upload of ``path`` failed because another writer won:
    ``path`` exists now, or the upload was aborted under it (a sweep aborts the
    uploads of keys that exist, and that object may be deleted since)."""
    try:
        fs.invalidate_cache(path)
        if fs.exists(path):
            return True
        return upload_id is not None and upload_id not in (_uploads_of(fs, path) or set())
    except Exception:  # the write's own failure is the one to raise
        return False
