"""A running CRC-32 whose large updates run on a helper thread.

The CRC comes from ISA-L (``isal``, several times faster than zlib on
current CPUs) when it is installed, else from the standard library's
``zlib``; both give identical values. Both release the GIL for large
buffers, so the CRC of one buffer can be computed while the caller writes
(or reads the next) buffer: an update waits only for the previous buffer's
CRC, so at most one buffer is in flight and the caller must keep it
unchanged until the next update or :attr:`RunningCrc.value`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    from zlib import crc32

__all__ = ["RunningCrc", "crc32", "running_crc"]

THREADED = 1 << 20  # buffers at least this large get their CRC on the helper thread


class RunningCrc:
    """CRC-32 of everything passed to :meth:`update`, in order, after ``initial``."""

    def __init__(self, initial: int = 0) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._value = initial
        self._pending: Future[int] | None = None

    def update(self, buffer: bytes | memoryview) -> None:
        value = self.value
        if len(buffer) >= THREADED:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crc32")
            self._pending = self._pool.submit(crc32, buffer, value)
        else:
            self._value = crc32(buffer, value)

    @property
    def value(self) -> int:
        if self._pending is not None:
            self._value = self._pending.result()
            self._pending = None
        return self._value

    def close(self) -> None:
        """End the helper thread, if one was started."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@contextmanager
def running_crc(initial: int = 0) -> Iterator[RunningCrc]:
    """A :class:`RunningCrc` continuing ``initial``, whose helper thread
    (started at the first large update, so small members cost no thread)
    ends with the block."""
    crc = RunningCrc(initial)
    try:
        yield crc
    finally:
        crc.close()
