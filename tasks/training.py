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
the significant parameters except ``checkpoint_root``. The cadence, retention
and reporting parameters and ``total_steps`` are not significant: changing
them resumes the run, so raising ``total_steps`` extends a finished run from
its newest checkpoint; lowering it below that checkpoint is an error.

At every start the run folder gets its record (``run.json``, every parameter;
:mod:`luigi_checkpoint.storage.runs`), and the metrics ``train_step`` returns
go to the run's history (:mod:`luigi_checkpoint.storage.history`) before each
checkpoint, so they outlive pruning and a crash loses only the steps the next
attempt recomputes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any, ClassVar

import luigi

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    StepExistsError,
    TotalStepsError,
    UnloadableArchiveError,
    UntrustedTypeError,
)
from luigi_checkpoint.storage.fs import Location
from luigi_checkpoint.storage.history import write_history
from luigi_checkpoint.storage.runs import write_run_record

from ._preemption import PreemptionGuard
from ._progress import Progress
from ._settings import default_checkpoint_root, location_of, storage_options_parameter
from .targets import CheckpointTarget

__all__ = ["TrainingInterrupted", "TrainingTask"]

logger = logging.getLogger("luigi-interface.checkpoint")

_RUN_ID_LENGTH = 10
_HISTORY_BATCH = 10_000
"""Steps of metrics held in memory at most: more are written as a history
segment before the next checkpoint (a crash loses none of them, a rerun
rewrites them)."""
_STALE_AFTER_NO_CADENCE = 3600.0


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
    total_steps = luigi.IntParameter(
        significant=False, positional=False, description="number of steps of a complete run (raise it to extend)"
    )
    checkpoint_every = _setting(luigi.IntParameter, 1000, "save every this many steps (0: never)")
    checkpoint_seconds = _setting(luigi.FloatParameter, 600.0, "save after this much wall time (0: never)")
    keep_last = _setting(luigi.IntParameter, 3, "newest checkpoints to keep")
    keep_every = _setting(luigi.OptionalIntParameter, None, "also keep every step divisible by this")
    keep_best = _setting(luigi.OptionalIntParameter, None, "also keep this many best checkpoints by monitor")
    monitor = _setting(luigi.OptionalParameter, None, "metric of train_step that ranks checkpoints (keep_best)")
    mode = luigi.ChoiceParameter(
        choices=("min", "max"), default="min", significant=False, positional=False,
        description="min: the lowest monitor is best; max: the highest",
    )
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
        return CheckpointStore(
            self.run_location(),
            keep_last=self.keep_last,
            keep_every=self.keep_every,
            keep_best=self.keep_best,
            monitor=self.monitor,
            mode=self.mode,
        )

    def output(self) -> CheckpointTarget:
        """The archive of the final step."""
        return CheckpointTarget(self.checkpoint_store().location_of(self.total_steps))

    def run(self) -> None:
        """Resume or start, train to ``total_steps``, save the final step once."""
        store = self.checkpoint_store()
        with PreemptionGuard() as guard:
            start, state = self._resume(store)
            if start > self.total_steps:
                raise TotalStepsError(
                    f"{self.run_label()}: total_steps={self.total_steps} is below the newest checkpoint, "
                    f"step {start} of {store.root_url}; pass total_steps={start} or more to continue "
                    "this run (a run is never cut back), or another checkpoint_root to start anew"
                )
            if start == self.total_steps:
                logger.info("%s: already at step %d, %s", self.run_label(), start, store.root_url)
                return
            self.write_run_record()
            try:
                self._train(store, guard, start, state)
            except BaseException:
                _settle(store)
                raise

    def write_run_record(self) -> None:
        """Write the run's ``run.json``: every parameter, ``total_steps``, the config files."""
        every_save = self.checkpoint_seconds if self.checkpoint_seconds > 0 else _STALE_AFTER_NO_CADENCE
        write_run_record(
            self.run_location(),
            family=self.task_family,
            run_id=self.run_id(),
            parameters=self.to_str_params(only_public=True),
            total_steps=self.total_steps,
            stale_after=2 * every_save + self.status_seconds,
            config_files=_config_files(),
        )

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
        progress = Progress(self, start, store.root_url)
        metrics: Mapping[str, float] = {}
        history: list[tuple[int, Mapping[str, float]]] = []
        try:
            for step in range(start + 1, self.total_steps + 1):
                metrics = {k: float(v) for k, v in (self.train_step(state, step) or {}).items()}
                history.append((step, metrics))
                if len(history) >= _HISTORY_BATCH:
                    write_history(store.root, history)
                    history.clear()
                if step == self.total_steps:
                    break
                if guard.signal_name is not None:
                    self._save(store, step, state, metrics, history, block=True)
                    progress.saved(step, metrics)
                    guard.stop_worker()
                    raise TrainingInterrupted(
                        f"{self.run_label()}: interrupted by {guard.signal_name} after step "
                        f"{step}/{self.total_steps}; saved checkpoint {store.url_of(step)}, "
                        f"a retry resumes from step {step}"
                    )
                if progress.checkpoint_due(step):
                    self._save(store, step, state, metrics, history, block=not self.async_save)
                    progress.saved(step, metrics)
                else:
                    progress.report(step, metrics)
            try:
                store.wait()
            except StepExistsError as exc:
                logger.warning("%s: checkpoint skipped: %s", self.run_label(), exc)
            self._save(store, self.total_steps, state, metrics, history, block=True)
            progress.saved(self.total_steps, metrics)
        finally:
            progress.finish()

    def _save(
        self,
        store: CheckpointStore,
        step: int,
        state: Any,
        metrics: Mapping[str, float],
        history: list[tuple[int, Mapping[str, float]]],
        *,
        block: bool,
    ) -> None:
        """Write the history so far, then the checkpoint of ``step``."""
        write_history(store.root, history)
        history.clear()
        metadata = {
            "metrics": dict(metrics),
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


def _config_files() -> list[str]:
    """The Luigi config files that exist, as Luigi reads them (later ones win)."""
    paths = getattr(type(luigi.configuration.get_config()), "_config_paths", [])
    return [os.path.abspath(p) for p in paths if os.path.isfile(p)]


def _settle(store: CheckpointStore) -> None:
    """Let an in-flight background save finish; its failure is only logged."""
    try:
        store.wait()
    except Exception as exc:  # the original failure is the one to raise
        logger.warning("background checkpoint save failed too: %s", exc)
