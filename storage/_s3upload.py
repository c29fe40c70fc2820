"""An uncommitted S3 upload whose parts go up concurrently.

s3fs's file uploads its parts one after another, each blocking the writer,
so a save ran below ``put_file``'s speed (which sends parts concurrently).
:class:`S3Upload` is the same contract (``write``, ``close``, then ``commit``
or ``discard``; nothing is published before ``commit``) with the parts of a
:class:`~luigi_checkpoint.storage._transfer.Transfer`: ``part_size`` bytes
each, at most ``concurrency`` in flight while the writer fills the next, so
memory stays under ``(concurrency + 1) * part_size`` bytes. An object smaller
than one part is one ``PutObject`` at commit, as with s3fs.

Every request goes through s3fs's ``call_s3`` (its retries, its translation
of S3 errors into ``OSError`` subclasses, ``FileExistsError`` for a failed
``If-None-Match``). The upload id is in ``mpu`` as in s3fs's file, so
:mod:`._s3` treats both alike.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fsspec.spec import AbstractFileSystem

from ._transfer import Transfer

__all__ = ["S3Upload"]


class S3Upload:
    """Write ``path`` on the s3fs filesystem ``fs`` as a multipart upload;
    ``exclusive`` completes it only if no object is there (``If-None-Match: *``)."""

    def __init__(self, fs: AbstractFileSystem, path: str, *, exclusive: bool, transfer: Transfer) -> None:
        self.fs = fs
        self.path = path
        self.closed = False
        self.mpu: dict[str, Any] | None = None
        self._bucket, self._key, _ = fs.split_path(path)
        self._match = {"IfNoneMatch": "*"} if exclusive else {}
        self._transfer = transfer
        self._buffer = bytearray()
        self._parts: list[Future[dict[str, Any]]] = []
        self._slots = threading.BoundedSemaphore(transfer.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes | memoryview) -> int:
        """Buffer ``data``; each full part is sent while writing goes on (it
        waits only when ``concurrency`` parts are in flight)."""
        if self.closed:
            raise ValueError(f"{self.path}: write to a closed upload")
        view = memoryview(data).cast("B")
        part_size = self._transfer.part_size
        start = 0
        while start < len(view):
            room = part_size - len(self._buffer)
            self._buffer += view[start : start + room]
            start += room
            if len(self._buffer) >= part_size:
                self._send_part()
        self._written += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing to do: parts go up as they fill."""

    def close(self) -> None:
        """Send the last part (if the upload has parts); :meth:`commit` publishes."""
        if self.closed:
            return
        if self.mpu is not None and self._buffer:
            self._send_part()
        self.closed = True

    def commit(self) -> None:
        """Publish the object: complete the upload once every part is up (or
        put the object whole if it was smaller than one part)."""
        self.close()
        if self.mpu is None:
            self._call("put_object", Body=self._buffer, **self._match)
        else:
            parts = [
                {"PartNumber": number, "ETag": part.result()["ETag"]}
                for number, part in enumerate(self._parts, 1)
            ]
            self._call(
                "complete_multipart_upload",
                UploadId=self.mpu["UploadId"],
                MultipartUpload={"Parts": parts},
                **self._match,
            )
        self._shutdown()
        self._buffer = bytearray()

    def discard(self) -> None:
        """Abort the upload: unsent parts are dropped, sent ones freed by the abort."""
        self.closed = True
        for part in self._parts:
            part.cancel()
        self._shutdown()
        self._buffer = bytearray()
        if self.mpu is not None:
            upload_id, self.mpu = self.mpu["UploadId"], None
            self._call("abort_multipart_upload", UploadId=upload_id)

    def _send_part(self) -> None:
        for part in self._parts:  # a failed part fails the write at once
            if part.done() and part.exception() is not None:
                raise part.exception()  # type: ignore[misc]
        if self.mpu is None:
            self.mpu = self._call("create_multipart_upload")
            self._pool = ThreadPoolExecutor(self._transfer.concurrency, thread_name_prefix="s3-part")
        assert self._pool is not None
        body, self._buffer = self._buffer, bytearray()
        self._slots.acquire()
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytearray) -> dict[str, Any]:
        try:
            assert self.mpu is not None
            return self._call("upload_part", UploadId=self.mpu["UploadId"], PartNumber=number, Body=body)
        finally:
            self._slots.release()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)
