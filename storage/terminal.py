"""Progress on a terminal: a bar redrawn in place, and a file that draws one as it is read.

The ``ckpt`` commands that read whole archives (``verify``, ``export``) wrap big
sources in :class:`ReadingBar` when stderr is a terminal; the training task
draws its step bar with :func:`draw`.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import IO, TextIO

__all__ = ["BIG", "ReadingBar", "draw", "is_terminal"]

BIG = 64 * 1024 * 1024
"""Sources from this size on get a bar (smaller ones are read in a blink)."""
_REDRAW_SECONDS = 0.2


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def draw(stream: TextIO, fraction: float, text: str) -> None:
    """Redraw the current line of ``stream`` as ``[####....] text``, cut to the terminal's width."""
    width = shutil.get_terminal_size().columns
    room = max(10, min(30, width - len(text) - 4))
    filled = int(room * min(max(fraction, 0.0), 1.0))
    line = f"[{'#' * filled}{'.' * (room - filled)}] {text}"
    stream.write("\r\x1b[K" + line[: width - 1])
    stream.flush()


class ReadingBar:
    """A binary file (read, seek, tell) that draws how much of it was read.

    Its ``repr`` is ``name``, so errors of readers that name their source name
    the archive, not this wrapper. :meth:`close` ends the bar's line; the
    wrapped file is closed with it.
    """

    def __init__(self, f: IO[bytes], name: str, size: int, label: str, stream: TextIO | None = None) -> None:
        self._f = f
        self._name = name
        self._size = max(size, 1)
        self._label = label
        self._stream = sys.stderr if stream is None else stream
        self._read = 0
        self._drawn = float("-inf")

    def __repr__(self) -> str:
        return self._name

    def __enter__(self) -> ReadingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._read += len(data)
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_SECONDS:
            self._drawn = now
            self._redraw()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if self._drawn > float("-inf"):
            self._read = self._size
            self._redraw()
            self._stream.write("\n")
            self._stream.flush()
        self._f.close()

    def _redraw(self) -> None:
        share = min(self._read / self._size, 1.0)
        draw(self._stream, share, f"{self._label} {self._name}: {100 * share:.0f}% of {self._size >> 20} MiB")
