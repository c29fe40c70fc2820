"""Resident memory of this process: now and the high-water mark since a reset.

On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark
(``VmHWM``) to the current RSS, so the peak of one operation is measured
exactly. Elsewhere the peak falls back to ``ru_maxrss`` (since process start).
"""

from __future__ import annotations

import resource
import sys


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss() -> int:
    """Current resident set size in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS; False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak() -> int:
    """RSS high-water mark in bytes (since :func:`reset_peak` when it worked)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024
