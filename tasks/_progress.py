"""Progress of one training attempt: checkpoint cadence and what people see.

Three audiences, each every ``status_seconds`` and at every checkpoint:

* the scheduler (``luigid``'s task list): a short status message that starts
  with the checkpoint's age and the run folder (the part a narrow column
  shows), and a progress percentage with two decimals, so it moves on runs of
  millions of steps and never shows as 0 once a step is done;
* the console: a log line ``step 1200/5000 (24.0%), 85 steps/s, ETA 44s,
  loss=0.1234, checkpoint 1000 12s ago`` on the ``luigi-interface`` logger;
* a terminal: when stderr is one, a live bar rewritten in place instead of
  the log lines.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from luigi_checkpoint.storage import terminal

__all__ = ["Progress"]

logger = logging.getLogger("luigi-interface.checkpoint")

_BAR_SECONDS = 0.2


class _Reporting(Protocol):
    total_steps: int
    checkpoint_every: int
    checkpoint_seconds: float
    status_seconds: float
    set_status_message: Any
    set_progress_percentage: Any

    def run_label(self) -> str: ...


def _duration(seconds: float) -> str:
    """``45s``, ``12m``, ``3h``, ``2d``: the largest whole unit."""
    seconds = max(0, int(seconds))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"


class Progress:
    """Checkpoint cadence and throttled progress reports of one attempt that
    starts at step ``start`` in the run folder ``folder``."""

    def __init__(self, task: _Reporting, start: int, folder: str, *, stream: TextIO | None = None) -> None:
        self.task = task
        self.folder = folder
        self.start = start
        self.started = time.monotonic()
        self.last_save = self.started
        self.last_report = float("-inf")
        self.last_bar = float("-inf")
        self.saved_step: int | None = start if start else None
        self.stream = sys.stderr if stream is None else stream
        self.live = terminal.is_terminal(self.stream)

    def checkpoint_due(self, step: int) -> bool:
        """Whether ``step`` is to be saved by ``checkpoint_every`` or ``checkpoint_seconds``."""
        every, seconds = self.task.checkpoint_every, self.task.checkpoint_seconds
        if every > 0 and step % every == 0:
            return True
        return seconds > 0 and time.monotonic() - self.last_save >= seconds

    def saved(self, step: int, metrics: Mapping[str, float]) -> None:
        """Checkpoint ``step`` was saved: report now."""
        self.last_save = time.monotonic()
        self.saved_step = step
        self.report(step, metrics, force=True)

    def report(self, step: int, metrics: Mapping[str, float], *, force: bool = False) -> None:
        """Report ``step`` if ``status_seconds`` passed since the last report (or ``force``)."""
        now = time.monotonic()
        if self.live and (force or now - self.last_bar >= _BAR_SECONDS):
            self.last_bar = now
            self._bar(step, metrics, now)
        if not force and now - self.last_report < self.task.status_seconds:
            return
        self.last_report = now
        total = self.task.total_steps
        checkpoint = self._checkpoint_note(now)
        values = ", ".join(f"{name}={float(value):.4g}" for name, value in metrics.items())
        if callable(self.task.set_status_message):
            self.task.set_status_message(
                f"{checkpoint}, {self.folder}, step {step}/{total}" + (f", {values}" if values else "")
            )
        if callable(self.task.set_progress_percentage):
            self.task.set_progress_percentage(self.percent(step))
        if not self.live:
            logger.info("%s: %s", self.task.run_label(), self._line(step, values, checkpoint, now))

    def finish(self) -> None:
        """End the live bar's line."""
        if self.live and self.last_bar > float("-inf"):
            self.stream.write("\n")
            self.stream.flush()

    def percent(self, step: int) -> float:
        """Progress in percent, two decimals, above 0 once a step is done."""
        share = 100 * step / self.task.total_steps
        return max(math.floor(share * 100) / 100, 0.01) if step else 0.0

    def _checkpoint_note(self, now: float) -> str:
        if self.saved_step is None:
            return "no checkpoint yet"
        return f"checkpoint {self.saved_step} {_duration(now - self.last_save)} ago"

    def _line(self, step: int, values: str, checkpoint: str, now: float) -> str:
        elapsed = now - self.started
        done = step - self.start
        parts = [f"step {step}/{self.task.total_steps} ({self.percent(step):.1f}%)"]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts += [f"{rate:.3g} steps/s", f"ETA {_duration((self.task.total_steps - step) / rate)}"]
        if values:
            parts.append(values)
        parts.append(checkpoint)
        return ", ".join(parts)

    def _bar(self, step: int, metrics: Mapping[str, float], now: float) -> None:
        values = " ".join(f"{name}={float(value):.4g}" for name, value in metrics.items())
        terminal.draw(self.stream, step / self.task.total_steps, self._line(step, values, self._checkpoint_note(now), now))
