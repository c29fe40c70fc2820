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

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    from zlib import crc32

__all__ = ["RunningCrc", "crc32", "running_crc"]

THREADED = 1 << 20  # buffers at least this large get their CRC on the helper thread
HELPERS = min(4, os.cpu_count() or 1)  # threads shared by all running CRCs of the process

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """The process's CRC threads, started at the first large update (a
    thread per member would cost more than the CRC of a few MiB)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=HELPERS, thread_name_prefix="crc32")
        return _pool


def _forget_helpers() -> None:
    # A forked child (Luigi's worker processes) has none of the parent's
    # threads: its pool would take jobs that never run.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


class RunningCrc:
    """CRC-32 of everything passed to :meth:`update`, in order, after ``initial``."""

    def __init__(self, initial: int = 0) -> None:
        self._value = initial
        self._pending: Future[int] | None = None

    def update(self, buffer: bytes | memoryview) -> None:
        value = self.value
        if len(buffer) >= THREADED:
            self._pending = _helpers().submit(crc32, buffer, value)
        else:
            self._value = crc32(buffer, value)

    @property
    def value(self) -> int:
        if self._pending is not None:
            self._value = self._pending.result()
            self._pending = None
        return self._value

    def close(self) -> None:
        """Wait for the buffer in flight, if any (the caller may reuse it after)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.cancel():
            wait([pending])


@contextmanager
def running_crc(initial: int = 0) -> Iterator[RunningCrc]:
    """A :class:`RunningCrc` continuing ``initial``; no CRC of its buffers
    runs after the block."""
    crc = RunningCrc(initial)
    try:
        yield crc
    finally:
        crc.close()
