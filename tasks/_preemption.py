"""Preemption signals (SIGTERM, SIGINT) turned into a flag read at step boundaries.

Luigi runs a task in the worker's own process (one worker) or in a forked
child (several workers, ``force_multiprocessing``): either way ``run()`` is in
the main thread of its process, where signal handlers can be installed. The
previous handlers are restored on exit. A second signal of a kind already
received gives up waiting for the step boundary: the previous handler runs.

After a preemption the task fails; :meth:`PreemptionGuard.stop_worker` also
asks the Luigi worker to take no new task (Luigi's SIGUSR1), since the machine
is going away; the retry happens on the next worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import luigi.worker

__all__ = ["PreemptionGuard"]

logger = logging.getLogger("luigi-interface.checkpoint")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
    """Context manager recording SIGTERM/SIGINT instead of dying at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("not in the main thread: SIGTERM/SIGINT will not save a checkpoint")
            return self
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name == name:
            logger.warning("%s received again: not waiting for the step to end", name)
            self._restore()
            signal.raise_signal(signum)
            return
        self.signal_name = name
        logger.warning("%s received: saving a checkpoint after the current step", name)

    def stop_worker(self) -> None:
        """Ask the Luigi worker running this task to take no new task."""
        if isinstance(multiprocessing.current_process(), luigi.worker.TaskProcess):
            os.kill(os.getppid(), signal.SIGUSR1)
            return
        handler = signal.getsignal(signal.SIGUSR1)
        if isinstance(getattr(handler, "__self__", None), luigi.worker.Worker):
            signal.raise_signal(signal.SIGUSR1)
