"""ExportSnapshot: a dated, numpy-only snapshot of a run's newest checkpoint.

The output is ``<export_root>/<run>/<YYYY-MM-DD>/snapshot.zip`` where
``<run>`` is ``<task family>/<run id>`` (the last two parts of the run's
folder). The task only needs one good checkpoint of the run, so it exports a
run that is still training; until there is one it waits as an incomplete
external dependency. Its output is a :class:`SnapshotTarget`, so cron plus
``luigi --module ... RangeDaily --of <export task> --start ...`` creates the
missing days (backfilling included) from one listing of the export folder.
"""

from __future__ import annotations

import logging
from typing import Any

import luigi

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.errors import CheckpointNotFoundError
from luigi_checkpoint.storage.snapshot import snapshot_from_archive

from ._settings import default_export_root, location_of, storage_options_parameter
from .targets import SnapshotTarget
from .training import TrainingTask

__all__ = ["ExportSnapshot", "RunHasCheckpoint"]

logger = logging.getLogger("luigi-interface.checkpoint")

_ATTEMPTS = 5


def _reader(run_url: str, storage_options: Any) -> CheckpointStore:
    """A store that only reads: it never prunes the run's checkpoints."""
    return CheckpointStore(location_of(run_url, storage_options), keep_last=None)


class RunHasCheckpoint(luigi.ExternalTask):
    """Complete once the run folder ``run_url`` holds a good checkpoint."""

    run_url = luigi.Parameter(description="folder of the run (path or URL)")
    storage_options = storage_options_parameter()

    def complete(self) -> bool:
        # docstring inherited
        return _reader(self.run_url, self.storage_options).latest_step() is not None


class ExportSnapshot(luigi.Task):
    """Snapshot of a run's newest good checkpoint for one ``date``.

    The run is either ``run_root`` (a run folder) or, in a subclass, the
    :class:`TrainingTask` returned by :meth:`training_task`. ``storage_options``
    apply to both the run's storage and ``export_root``.
    """

    date = luigi.DateParameter(description="day of the export (names the output folder)")
    run_root = luigi.OptionalParameter(
        default=None, description="folder of the run to export; default: training_task()'s"
    )
    export_root = luigi.OptionalParameter(
        default=None, description="folder or URL of the snapshots (default: [export] root)"
    )
    select = luigi.ListParameter(
        default=(), description="array names or fnmatch patterns to export (default: all)"
    )
    after_training = luigi.BoolParameter(
        default=False, description="require the complete training task (export its final step)"
    )
    storage_options = storage_options_parameter()

    def training_task(self) -> TrainingTask | None:
        """The training task whose run is exported; None to use ``run_root``."""
        return None

    def run_url(self) -> str:
        """Folder of the exported run."""
        if self.run_root:
            return str(self.run_root).rstrip("/")
        training = self.training_task()
        if training is None:
            raise ValueError(f"{self}: set run_root or override training_task()")
        return training.run_url()

    def run_name(self) -> str:
        """``<task family>/<run id>``: the last two parts of the run's folder."""
        return "/".join(self.run_url().split("/")[-2:])

    def requires(self) -> luigi.Task:
        # docstring inherited
        training = self.training_task()
        if self.after_training and training is not None:
            return training
        return RunHasCheckpoint(run_url=self.run_url(), storage_options=self.storage_options)

    def output(self) -> SnapshotTarget:
        # docstring inherited
        root = str(self.export_root or default_export_root()).rstrip("/")
        url = f"{root}/{self.run_name()}/{self.date:%Y-%m-%d}/snapshot.zip"
        return SnapshotTarget(location_of(url, self.storage_options))

    def _label(self) -> str:
        return f"{self.task_family} {self.date:%Y-%m-%d}"

    def run(self) -> None:
        """Write the snapshot of the newest good checkpoint (retrying if pruned away)."""
        store = _reader(self.run_url(), self.storage_options)
        target = self.output()
        for _ in range(_ATTEMPTS):
            try:
                with store.open() as (step, checkpoint):
                    snapshot_from_archive(
                        checkpoint,
                        target.location,
                        select=list(self.select) or None,
                        step=step,
                        metadata={"export_date": self.date.isoformat(), "run": store.root_url},
                    )
            except FileNotFoundError as exc:
                logger.info("%s: a checkpoint was pruned while exporting (%s); retrying", self._label(), exc)
                continue
            logger.info("%s: exported step %d of %s to %s", self._label(), step, store.root_url, target.path)
            return
        raise CheckpointNotFoundError(f"{store.root_url}: checkpoints kept vanishing while exporting")
