"""Range reads from S3 streamed straight into memory.

s3fs's file answers a range request with one bytes object: a restore held
each part's copy and copied it again into the array. :class:`S3Ranges`
reads a ``GetObject`` body into the destination views as it arrives
(aiobotocore's ``readinto``), so a request of any size holds no copy, and a
restore can send as few requests as its concurrency allows
(:func:`~luigi_checkpoint.storage._transfer.plan`).

Each request asks for the version of the object the file opened (its
``IfMatch`` ETag or version id, as s3fs's own reads do): an object replaced
meanwhile fails the read (``FileExpired``) instead of mixing two versions. A
body cut short is asked again from the byte reached, up to the filesystem's
``retries`` times.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence
from functools import cache
from typing import Any

from fsspec.asyn import sync

__all__ = ["S3Ranges", "streams_ranges"]

@cache
def _cut_short() -> tuple[type[BaseException], ...]:
    """Failures of a body in transit, after its request succeeded (imported
    only when an S3 file is read: s3fs has loaded them by then)."""
    from aiohttp import ClientPayloadError
    from botocore.exceptions import HTTPClientError, IncompleteReadError

    return (asyncio.TimeoutError, ConnectionError, ClientPayloadError, HTTPClientError, IncompleteReadError)


def streams_ranges(f: Any) -> bool:
    """Whether ``f`` is an s3fs file, read by :class:`S3Ranges`."""
    return getattr(f.fs, "call_s3", None) is not None and hasattr(f, "read_kw")


class S3Ranges:
    """:class:`~luigi_checkpoint.storage._transfer.Ranges` of the s3fs file ``f``."""

    streams = True

    def __init__(self, f: Any) -> None:
        self._fs = f.fs
        self._name = f.details.get("name", f.path)
        self._request = {"Bucket": f.bucket, "Key": f.key, **f.read_kw}
        if f.version_id:
            self._request["VersionId"] = f.version_id
        self._etag = f.details.get("ETag") if self._fs.local_expiry_check else None

    def __call__(self, offset: int, views: Sequence[memoryview]) -> None:
        sync(self._fs.loop, self._fill, offset, list(views))

    async def _fill(self, offset: int, views: list[memoryview]) -> None:
        """Fill ``views`` from ``offset`` on; a body cut short is asked again
        from the byte reached (``retries`` times in a row without progress)."""
        total = sum(map(len, views))
        done = failures = 0

        async def stream() -> None:
            nonlocal done
            body = await self._body(f"bytes={offset + done}-{offset + total - 1}")
            try:
                skip = done
                for view in views:
                    if skip >= len(view):
                        skip -= len(view)
                        continue
                    view, skip = view[skip:], 0
                    while view:
                        got = await body.readinto(view)
                        if got == 0:
                            raise EOFError(f"{total} bytes asked at offset {offset}, {done} came")
                        view = view[got:]
                        done += got
            finally:
                body.close()

        while done < total:
            before = done
            try:
                await stream()
            except _cut_short():
                failures = 1 if done > before else failures + 1
                if failures >= max(self._fs.retries, 1):
                    raise
                await asyncio.sleep(min(0.1 * 1.7**failures, 15))

    async def _body(self, byte_range: str) -> Any:
        """The body of a ``GetObject`` of ``byte_range`` of the version opened."""
        from s3fs.utils import FileExpired

        try:
            answer = await self._fs._call_s3("get_object", Range=byte_range, **self._request)
        except OSError as exc:
            if exc.errno == errno.EINVAL and "pre-conditions" in str(exc):
                raise FileExpired(filename=self._name, e_tag=self._request.get("IfMatch")) from exc
            raise
        if self._etag is not None and answer.get("ETag") != self._etag:
            answer["Body"].close()
            raise FileExpired(filename=self._name, e_tag=self._etag)
        return answer["Body"]
