"""The cyclic garbage collector paused while a checkpoint's per-array objects are made.

Freezing a state and listing its arrays in the manifest make a few container
objects per array (tuples, lists, dicts) that form no cycles. With 50,000
arrays the collector runs hundreds of times meanwhile, each full pass over a
heap that keeps growing: 12% of a save. :func:`paused` turns it off for such
a stretch of pure computation (never around I/O, where another thread could
go on making garbage for long) and back on after, unless it was off already.
Nested and concurrent pauses in several threads end with the last one.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused"]

_lock = threading.Lock()
_holders = 0
_enable_after = False


@contextmanager
def paused() -> Iterator[None]:
    """Run the body with the cyclic garbage collector off."""
    global _holders, _enable_after
    with _lock:
        if _holders == 0:
            _enable_after = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _enable_after:
                gc.enable()
