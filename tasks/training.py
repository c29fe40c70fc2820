"""TrainingTask: a Luigi task whose long loop checkpoints and resumes.

A subclass implements :meth:`TrainingTask.init_state` and
:meth:`TrainingTask.train_step`. :meth:`TrainingTask.run` restores the newest
good checkpoint of the run (or starts from ``init_state()``), runs the
remaining steps, saves on schedule and completes by saving the final step,
which is the task's output. Killed, failed or preempted, the next attempt, on
this worker or another one sharing the storage, continues from the newest
checkpoint and ends with exactly the arrays of an uninterrupted run, provided
all randomness lives in the state.

Step numbering: the state after ``N`` calls of ``train_step`` is "at step
``N``" and is saved as checkpoint ``N``; ``train_step(state, step)`` performs
step ``step`` (1-based). The run's folder is
``<checkpoint_root>/<task family>/<run id>``, the run id being a short hash of
the significant parameters except ``checkpoint_root`` (the cadence and
retention parameters are not significant, so changing them resumes the run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import luigi

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    StepExistsError,
    UnloadableArchiveError,
    UntrustedTypeError,
)
from luigi_checkpoint.storage.fs import Location

from ._preemption import PreemptionGuard
from ._settings import default_checkpoint_root, location_of, storage_options_parameter
from .targets import CheckpointTarget

__all__ = ["TrainingInterrupted", "TrainingTask"]

logger = logging.getLogger("luigi-interface.checkpoint")

_RUN_ID_LENGTH = 10


class TrainingInterrupted(CheckpointError):
    """Training stopped on a signal after saving a checkpoint of the current step."""


def _setting(parameter: type[luigi.Parameter], default: Any, description: str) -> luigi.Parameter:
    """A parameter that does not change the run (cadence, retention, reporting)."""
    return parameter(default=default, significant=False, positional=False, description=description)


class TrainingTask(luigi.Task):
    """Base class of resumable training tasks; see the module docstring."""

    checkpoint_root = luigi.OptionalParameter(
        default=None, positional=False, description="folder or URL of the runs (default: [checkpoint] root)"
    )
    total_steps = luigi.IntParameter(positional=False, description="number of steps of a complete run")
    checkpoint_every = _setting(luigi.IntParameter, 1000, "save every this many steps (0: never)")
    checkpoint_seconds = _setting(luigi.FloatParameter, 600.0, "save after this much wall time (0: never)")
    keep_last = _setting(luigi.IntParameter, 3, "newest checkpoints to keep")
    keep_every = _setting(luigi.OptionalIntParameter, None, "also keep every step divisible by this")
    async_save = _setting(luigi.BoolParameter, False, "write checkpoints in a background thread")
    status_seconds = _setting(luigi.FloatParameter, 5.0, "seconds between progress reports")
    storage_options = storage_options_parameter()

    trusted_types: ClassVar[tuple[type | str, ...]] = ()
    """Classes (or dotted-name strings, ``"mypkg.models.Model"``) the state may
    contain beyond the safe defaults; checked at every save, so a state the
    resume would refuse fails at its first checkpoint."""

    def init_state(self) -> Any:
        """The state at step 0 (model, optimizer, ``numpy.random.Generator``...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement init_state()")

    def train_step(self, state: Any, step: int) -> Mapping[str, float] | None:
        """Perform step ``step`` (1-based) on ``state`` in place; may return metrics."""
        raise NotImplementedError(f"{type(self).__name__} must implement train_step()")

    def run_id(self) -> str:
        """Short stable hash of the significant parameters but ``checkpoint_root``."""
        params = self.to_str_params(only_significant=True)
        params.pop("checkpoint_root", None)
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return digest[:_RUN_ID_LENGTH]

    def root_url(self) -> str:
        """``checkpoint_root``, or ``[checkpoint] root`` when it is not set."""
        return str(self.checkpoint_root or default_checkpoint_root()).rstrip("/")

    def run_url(self) -> str:
        """The run's folder: ``<checkpoint_root>/<task family>/<run id>``."""
        return f"{self.root_url()}/{self.task_family}/{self.run_id()}"

    def run_label(self) -> str:
        """``<task family> <run id>``: how log lines name the run."""
        return f"{self.task_family} {self.run_id()}"

    def run_location(self) -> Location:
        """The run's folder, resolved with ``storage_options`` (default:
        ``[checkpoint] storage_options``)."""
        return location_of(self.run_url(), self.storage_options)

    def checkpoint_store(self) -> CheckpointStore:
        """The :class:`CheckpointStore` of this run."""
        return CheckpointStore(self.run_location(), keep_last=self.keep_last, keep_every=self.keep_every)

    def output(self) -> CheckpointTarget:
        """The archive of the final step."""
        return CheckpointTarget(self.checkpoint_store().location_of(self.total_steps))

    def run(self) -> None:
        """Resume or start, train to ``total_steps``, save the final step once."""
        store = self.checkpoint_store()
        with PreemptionGuard() as guard:
            start, state = self._resume(store)
            if start >= self.total_steps:
                logger.info("%s: already at step %d, %s", self.run_label(), start, store.root_url)
                return
            try:
                self._train(store, guard, start, state)
            except BaseException:
                _settle(store)
                raise

    def _trust_hint(self) -> str:
        return (
            f"add them to {type(self).__name__}.trusted_types, as classes or dotted-name strings"
        )

    def _resume(self, store: CheckpointStore) -> tuple[int, Any]:
        try:
            step, state = store.restore(trusted=self.trusted_types)
        except UntrustedTypeError as exc:
            raise UntrustedTypeError(exc.source, exc.names, self._trust_hint()) from exc
        except UnloadableArchiveError as exc:
            raise UnloadableArchiveError(
                f"{self.run_label()}: cannot resume: {exc}. Every checkpoint of "
                f"{store.root_url} is kept; no attempt starts over while it cannot be loaded"
            ) from exc
        except CheckpointNotFoundError:
            logger.info("%s: starting at step 0 of %d, %s", self.run_label(), self.total_steps, store.root_url)
            return 0, self.init_state()
        logger.info(
            "%s: resumed from step %d of %d, %s", self.run_label(), step, self.total_steps, store.url_of(step)
        )
        return step, state

    def _train(self, store: CheckpointStore, guard: PreemptionGuard, start: int, state: Any) -> None:
        progress = _Progress(self, start)
        metrics: Mapping[str, float] = {}
        for step in range(start + 1, self.total_steps + 1):
            metrics = self.train_step(state, step) or {}
            if step == self.total_steps:
                break
            if guard.signal_name is not None:
                self._save(store, step, state, metrics, block=True)
                progress.saved(step, metrics)
                guard.stop_worker()
                raise TrainingInterrupted(
                    f"{self.run_label()}: interrupted by {guard.signal_name} after step "
                    f"{step}/{self.total_steps}; saved checkpoint {store.url_of(step)}, "
                    f"a retry resumes from step {step}"
                )
            if progress.checkpoint_due(step):
                self._save(store, step, state, metrics, block=not self.async_save)
                progress.saved(step, metrics)
            else:
                progress.report(step, metrics)
        try:
            store.wait()
        except StepExistsError as exc:
            logger.warning("%s: checkpoint skipped: %s", self.run_label(), exc)
        self._save(store, self.total_steps, state, metrics, block=True)
        progress.saved(self.total_steps, metrics)

    def _save(
        self, store: CheckpointStore, step: int, state: Any, metrics: Mapping[str, float], *, block: bool
    ) -> None:
        metadata = {
            "metrics": {k: float(v) for k, v in metrics.items()},
            "total_steps": self.total_steps,
            "task_id": self.task_id,
            "host": socket.gethostname(),
        }
        try:
            store.save(step, state, metadata, block=block, trusted=self.trusted_types)
        except UntrustedTypeError as exc:
            raise UntrustedTypeError(
                exc.source, exc.names, f"a resume would refuse this state; {self._trust_hint()}",
                refusing="save",
            ) from None
        except StepExistsError as exc:
            # Another worker runs this very run (same parameters, so the same
            # arrays), or a damaged leftover holds the name. The final step
            # must exist and be good; a checkpoint on the way may be skipped.
            if step == self.total_steps and store.latest_step() == step:
                logger.warning("%s: final checkpoint written by another worker: %s", self.run_label(), exc)
            elif step == self.total_steps:
                raise
            else:
                logger.warning("%s: checkpoint skipped: %s", self.run_label(), exc)


def _settle(store: CheckpointStore) -> None:
    """Let an in-flight background save finish; its failure is only logged."""
    try:
        store.wait()
    except Exception as exc:  # the original failure is the one to raise
        logger.warning("background checkpoint save failed too: %s", exc)


class _Progress:
    """Checkpoint cadence and throttled progress reports of one attempt."""

    def __init__(self, task: TrainingTask, start: int) -> None:
        self.task = task
        self.started = time.monotonic()
        self.last_save = self.started
        self.last_report = float("-inf")
        self.checkpoint_note = f"resumed from checkpoint step {start}" if start else "no checkpoint yet"
        self.saved_step: int | None = None

    def checkpoint_due(self, step: int) -> bool:
        every, seconds = self.task.checkpoint_every, self.task.checkpoint_seconds
        if every > 0 and step % every == 0:
            return True
        return seconds > 0 and time.monotonic() - self.last_save >= seconds

    def saved(self, step: int, metrics: Mapping[str, float]) -> None:
        self.last_save = time.monotonic()
        self.saved_step = step
        self.report(step, metrics, force=True)

    def report(self, step: int, metrics: Mapping[str, float], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < self.task.status_seconds:
            return
        self.last_report = now
        if self.saved_step is not None:
            self.checkpoint_note = f"checkpoint step {self.saved_step} saved {now - self.last_save:.0f} s ago"
        parts = [f"step {step}/{self.task.total_steps}"]
        parts += [f"{name}={float(value):.4g}" for name, value in metrics.items()]
        parts.append(self.checkpoint_note)
        message = ", ".join(parts)
        if callable(self.task.set_status_message):
            self.task.set_status_message(message)
        if callable(self.task.set_progress_percentage):
            self.task.set_progress_percentage(round(100 * step / self.task.total_steps))
        logger.debug("%s: %s", self.task.run_label(), message)
