"""Checkpoint store: one run's folder of ``step-<12 digits>.zip`` archives.

Layout and discovery
    Each checkpoint is one archive named ``step-000000001234.zip``. The step is
    zero-padded to 12 digits so that string order is step order for every step
    from 0 to ``MAX_STEP`` (10**12 - 1, about 31 years at 1000 steps a second);
    larger or negative steps are refused rather than named out of order. One
    listing of the folder, bypassing fsspec's listing cache, finds every step;
    there is no pointer file to keep consistent. Names that do not match the
    pattern exactly (other files, folders, temp files) are ignored.

The newest good checkpoint
    A checkpoint counts only if its archive passes the cheap check of
    :meth:`luigi_checkpoint.storage.archive.Archive.manifest` (end of central
    directory and manifest, read with range requests): ``latest_step()`` reads the newest
    archives only, until one passes. A damaged archive is logged with its URL
    and skipped, never loaded; :meth:`CheckpointStore.restore` also falls back
    when the full load fails with an :class:`ArchiveError`. The archive that is
    loaded is opened once: checked, then loaded through the same handle. A file that
    vanishes while it is being read (another process pruned it) makes the
    store list again: newer checkpoints exist by then. "No good checkpoint"
    takes two listings in a row that agree.

Retention
    After each committed save, and on :meth:`CheckpointStore.prune`: keep the
    newest ``keep_last`` archives by step (damaged or not), every step that
    is a multiple of ``keep_every`` and the ``keep_best`` by the metric
    ``monitor`` (:mod:`._retention`), and never delete the newest good archive.
    Files already deleted by a concurrent prune are not an error. Temp files
    of interrupted writes (``.step-<12 digits>.zip.<hex>.partial``) are deleted
    once :func:`luigi_checkpoint.storage.fs.is_abandoned_temp` says no writer holds them (a live
    local writer keeps a lock on its temp file), so a write in progress in
    another process is never touched. On object stores an interrupted upload
    leaves no visible object; every prune aborts the incomplete uploads of
    steps whose archive exists (:func:`luigi_checkpoint.storage._s3.abort_uploads_of_existing`),
    so the leftovers of a killed save go when that step is saved again, as a
    retried task does.

Asynchronous saves
    ``save(..., block=False)`` pickles the state and copies its arrays in the
    caller's thread (the only stall), then writes in a background thread. One
    save is in flight at a time; every later call of the store first waits for
    it, and raises its failure (once) instead of doing its own work. The
    thread is not a daemon: the interpreter finishes the write before exiting.
    After a background write the store keeps its copy of the arrays and the
    next ``block=False`` save copies into those buffers (arrays of unchanged
    name, shape and dtype), which costs no allocation: asynchronous saving
    holds one extra copy of the state's arrays for the store's lifetime.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from . import _manifest, _retention, _s3, archive
from .errors import ArchiveError, CheckpointNotFoundError, ObjectExistsError, StepExistsError
from .fs import (
    Location,
    atomic_write,
    fresh_listing,
    is_abandoned_temp,
    is_temp_name,
    resolve,
    storage_errors,
)
from .history import History, read_history

__all__ = [
    "MAX_STEP",
    "ArrayInfo",
    "CheckpointInfo",
    "CheckpointStore",
    "VerifyReport",
    "archive_name",
    "step_of",
]

logger = logging.getLogger(__name__)

MAX_STEP = 10**12 - 1
_STEP_DIGITS = 12
_ARCHIVE_NAME = re.compile(r"step-(\d{12})\.zip")
_RELISTS = 5

T = TypeVar("T")


def archive_name(step: int) -> str:
    """The archive name of ``step``: ``step-<12-digit step>.zip``."""
    step = operator.index(step)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"checkpoint step must be in 0..{MAX_STEP}, got {step}")
    return f"step-{step:0{_STEP_DIGITS}d}.zip"


def step_of(name: str) -> int | None:
    """The step of an archive base name, or None if it is not a checkpoint archive."""
    match = _ARCHIVE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ArrayInfo:
    """One array of a checkpoint, as listed in its manifest."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class CheckpointInfo:
    """What the manifest of one checkpoint says, without loading it."""

    step: int
    url: str
    size: int
    created: datetime
    metadata: Mapping[str, Any]
    arrays: tuple[ArrayInfo, ...]


@dataclass(frozen=True)
class VerifyReport:
    """The result of a full check (every CRC and NPY header) of one checkpoint."""

    step: int
    url: str
    ok: bool
    problems: tuple[str, ...]


@dataclass(frozen=True)
class _Listing:
    steps: list[int]
    stale_temps: list[str]


class CheckpointStore:
    """The checkpoints of one run, in the folder ``root`` (a path or URL).

    Parameters
    ----------
    root
        Folder of the run: a local path, an fsspec URL (``s3://bucket/run``)
        or a :class:`~luigi_checkpoint.storage.fs.Location`.
    keep_last
        Number of newest checkpoints kept by pruning; None keeps everything.
    keep_every
        Also keep every step that is a multiple of this number.
    keep_best
        Also keep this many best checkpoints by the metric ``monitor`` of
        their metadata (``metadata["metrics"][monitor]``), lowest first with
        ``mode="min"``, highest with ``"max"``. With ``keep_last=None`` and
        ``keep_best`` set, only the best, ``keep_every`` and the newest good
        checkpoint stay.
    storage_options
        fsspec options of the storage (S3 endpoint, credentials...).

    A store object is meant for one thread; several stores (in several
    processes) may share one folder.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Location,
        *,
        keep_last: int | None = 3,
        keep_every: int | None = None,
        keep_best: int | None = None,
        monitor: str | None = None,
        mode: str = "min",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        for option, value in (("keep_last", keep_last), ("keep_every", keep_every), ("keep_best", keep_best)):
            if value is not None and operator.index(value) < 1:
                raise ValueError(f"{option} must be a positive integer or None, got {value}")
        if keep_best is not None and not monitor:
            raise ValueError("keep_best needs monitor=, the name of the metric that ranks checkpoints")
        if mode not in _retention.MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.keep_best = keep_best
        self.monitor = monitor
        self.mode = mode
        self._scores: dict[int, float | None] = {}
        location = resolve(root, storage_options)
        self._root = Location(location.fs, location.path.rstrip("/") or location.path, location.transfer)
        self._pending: threading.Thread | None = None
        self._result: CheckpointInfo | None = None
        self._failure: BaseException | None = None
        self._spare: archive.Frozen | None = None

    def __repr__(self) -> str:
        return (
            f"CheckpointStore({self.root_url!r}, keep_last={self.keep_last}, "
            f"keep_every={self.keep_every}, keep_best={self.keep_best}, monitor={self.monitor!r}, "
            f"mode={self.mode!r})"
        )

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        elif self._pending is not None:
            self._pending.join()

    @property
    def root(self) -> Location:
        """The run's folder."""
        return self._root

    @property
    def root_url(self) -> str:
        """URL of the run's folder (plain path on local disk)."""
        return self._root.url

    def location_of(self, step: int) -> Location:
        """Where the archive of ``step`` is (whether or not it exists)."""
        return self._root.child(archive_name(step))

    def url_of(self, step: int) -> str:
        """URL of the archive of ``step`` (whether or not it exists)."""
        return self.location_of(step).url

    # -- writing -----------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        block: bool = True,
        trusted: Iterable[Any] | None = None,
    ) -> CheckpointInfo | None:
        """Write the checkpoint of ``step``, then prune.

        ``metadata`` (JSON-able: metrics, wall time, host...) goes into the
        manifest, with ``"step"`` set to ``step``. Raises
        :class:`StepExistsError` if the step exists (the archive stays as it
        was). With ``block=False`` the arrays are copied now, the archive is
        written in a background thread and None is returned; :meth:`wait`
        gives the result. With ``trusted`` (what :meth:`restore` will be given)
        a state that restore would refuse raises :class:`UntrustedTypeError`
        now, and nothing is written.
        """
        self._settle()
        step = operator.index(step)
        meta = _json_copy({**(metadata or {}), "step": step}, self.url_of(step))
        frozen = archive.freeze(state, copy=not block, reuse=self._spare)
        self._spare = None
        if trusted is not None:
            archive.check_trusted(frozen, trusted, self.url_of(step))
        if block:
            return self._write(step, frozen, meta)
        self._pending = threading.Thread(
            target=self._write_in_background,
            args=(step, frozen, meta),
            name=f"checkpoint-save-{step}",
        )
        self._pending.start()
        return None

    def wait(self) -> CheckpointInfo | None:
        """Wait for the background save; its info, or None if there was none.

        Raises the failure of the background save.
        """
        return self._settle()

    def close(self) -> None:
        """Wait for the background save and raise its failure, if any."""
        self._settle()

    def _write(self, step: int, frozen: archive.Frozen, meta: dict[str, Any]) -> CheckpointInfo:
        target = self.location_of(step)
        try:
            with atomic_write(target, exclusive=True) as f:
                manifest = archive.write_frozen(frozen, f, metadata=meta, where=target.url)
                size = f.tell()
        except ObjectExistsError as exc:
            raise StepExistsError(f"checkpoint of step {step} exists: {exc}") from None
        info = self._info_from(step, size, manifest)
        if self.monitor:
            self._scores[step] = _retention.metric_of(info.metadata, self.monitor)
        try:
            self._prune(known_good=step)
        except OSError as exc:
            logger.warning("saved %s, but pruning %s failed: %s", info.url, self.root_url, exc)
        return info

    def _write_in_background(self, step: int, frozen: archive.Frozen, meta: dict[str, Any]) -> None:
        try:
            self._result = self._write(step, frozen, meta)
            self._spare = frozen  # written: the next async save copies into its buffers
        except BaseException as exc:  # handed to the caller by _settle()
            logger.warning("background save of %s failed: %s", self.url_of(step), exc)
            self._failure = exc

    def _settle(self) -> CheckpointInfo | None:
        thread, self._pending = self._pending, None
        if thread is not None:
            thread.join()
        failure, self._failure = self._failure, None
        result, self._result = self._result, None
        if failure is not None:
            raise failure
        return result

    # -- reading -----------------------------------------------------------

    def steps(self) -> list[int]:
        """Every step in the folder, ascending (damaged archives included)."""
        self._settle()
        return self._scan().steps

    def latest_step(self) -> int | None:
        """The newest step whose archive passes the cheap check; None if none."""
        self._settle()
        found = self._newest(self._check)
        return None if found is None else found[0]

    @contextmanager
    def open(self, step: int | None = None) -> Iterator[tuple[int, archive.Archive]]:
        """Open a checkpoint that passes the cheap check: ``(step, archive)``,
        the archive closed when the block ends.

        ``step=None`` opens the newest such checkpoint (as :meth:`latest_step`
        finds it). Raises :class:`CheckpointNotFoundError` if there is none.
        """
        self._settle()

        def opened(at: int) -> archive.Archive:
            handle = self._open(at)
            try:
                handle.manifest()
            except BaseException:
                handle.close()
                raise
            return handle

        found = self._find(step, opened, "no good checkpoint to open")
        with found[1]:
            yield found

    def info(self, step: int) -> CheckpointInfo:
        """Manifest facts of ``step`` (size, created, metadata, arrays).

        Raises :class:`ArchiveError` if the archive fails the cheap check.
        """
        self._settle()
        try:
            with self._open(step) as handle:
                return self._info_from(step, handle.size, handle.manifest())
        except FileNotFoundError:
            raise self._not_found(step) from None

    def history(self) -> History:
        """The run's metric history (:mod:`.history`): every step's metrics,
        pruned checkpoints' included."""
        self._settle()
        return read_history(self._root)

    def best_step(self) -> int | None:
        """The step whose checkpoint is best by ``monitor`` (and passes the cheap
        check); None if no checkpoint has the metric."""
        self._settle()
        if not self.monitor:
            raise ValueError(f"{self.root_url}: best_step() needs a store made with monitor=")
        found = _retention.best(self._scores_of(self._scan().steps), 1, self.mode)
        return found[0] if found else None

    def restore(
        self,
        step: int | None = None,
        *,
        best: bool = False,
        trusted: Iterable[Any] = (),
        renames: Mapping[str, str] | None = None,
        mmap: bool = False,
        unsafe: bool = False,
        map_location: Any = None,
        as_numpy: bool = False,
    ) -> tuple[int, Any]:
        """Load a checkpoint: ``(step, state)``.

        The archive must pass the cheap check of :meth:`latest_step` and load;
        ``step=None`` takes the newest such checkpoint, skipping (and logging)
        those that fail with an :class:`ArchiveError`. Each archive is opened
        once. ``best=True`` takes :meth:`best_step` instead. ``trusted``,
        ``renames``, ``mmap``, ``unsafe``, ``map_location`` and ``as_numpy`` are
        those of :func:`luigi_checkpoint.storage.archive.load`. Raises
        :class:`CheckpointNotFoundError` if there is no (good) checkpoint.
        """
        self._settle()
        if best:
            if step is not None:
                raise ValueError("restore() takes a step or best=True, not both")
            step = self.best_step()
            if step is None:
                raise CheckpointNotFoundError(f"{self.root_url}: no checkpoint has metric {self.monitor!r}")

        def load(at: int) -> Any:
            with self._open(at, mmap=mmap) as handle:
                handle.manifest()
                return handle.load(trusted=trusted, renames=renames, unsafe=unsafe,
                                   map_location=map_location, as_numpy=as_numpy)

        return self._find(step, load, "no good checkpoint to restore")

    def _find(self, step: int | None, check: Callable[[int], T], nothing: str) -> tuple[int, T]:
        """``(step, check(step))`` for the given step, or for the newest step that
        passes ``check``; :class:`CheckpointNotFoundError` saying ``nothing``."""
        if step is not None:
            try:
                return step, check(step)
            except FileNotFoundError:
                raise self._not_found(step) from None
        found = self._newest(check)
        if found is None:
            raise CheckpointNotFoundError(f"{self.root_url}: {nothing}")
        return found

    def verify(self, step: int) -> VerifyReport:
        """Check every CRC and NPY header of the archive of ``step``."""
        self._settle()
        try:
            problems = tuple(archive.verify(self.location_of(step)))
        except FileNotFoundError:
            raise self._not_found(step) from None
        return VerifyReport(step=step, url=self.url_of(step), ok=not problems, problems=problems)

    def _not_found(self, step: int) -> CheckpointNotFoundError:
        return CheckpointNotFoundError(f"{self.url_of(step)}: no checkpoint of step {step}")

    def _open(self, step: int, *, mmap: bool = False) -> archive.Archive:
        return archive.open_archive(self.location_of(step), mmap=mmap)

    def _check(self, step: int) -> dict[str, Any]:
        with self._open(step) as handle:
            return handle.manifest()

    def _scan(self) -> _Listing:
        steps: list[int] = []
        stale: list[str] = []
        for entry in fresh_listing(self._root):
            if entry.get("type") != "file":
                continue
            name = entry["name"].rstrip("/").rpartition("/")[2]
            step = step_of(name)
            if step is not None:
                steps.append(step)
            elif _is_own_temp(name) and is_abandoned_temp(self._root.fs, entry):
                stale.append(entry["name"])
        return _Listing(sorted(steps), stale)

    def _first_passing(self, steps: list[int], check: Callable[[int], T]) -> tuple[int, T] | None:
        """Newest ``(step, check(step))`` that passes; damaged ones are logged.

        A FileNotFoundError (the archive vanished) propagates.
        """
        for step in reversed(steps):
            try:
                return step, check(step)
            except ArchiveError as exc:
                logger.warning("skipping damaged checkpoint %s: %s", self.url_of(step), exc)
        return None

    def _newest(self, check: Callable[[int], T]) -> tuple[int, T] | None:
        """Newest ``(step, check(step))`` that passes; None only when two listings
        in a row hold the same steps and none passes (a listing of a folder that
        other processes change can miss what they wrote meanwhile)."""
        seen: list[int] | None = None
        for _ in range(_RELISTS):
            steps = self._scan().steps
            if steps == seen:
                return None
            try:
                found = self._first_passing(steps, check)
            except FileNotFoundError:
                continue  # pruned under us: newer checkpoints exist now
            if found is not None:
                return found
            seen = steps
        raise CheckpointNotFoundError(
            f"{self.root_url}: checkpoints kept changing under concurrent writers and pruning"
        )

    def _info_from(self, step: int, size: int, manifest: dict[str, Any]) -> CheckpointInfo:
        return CheckpointInfo(
            step=step,
            url=self.url_of(step),
            size=size,
            created=_manifest.parse_time(manifest["created"]),
            metadata=manifest.get("metadata") or {},
            arrays=tuple(
                ArrayInfo(a["name"], a["dtype"], tuple(a["shape"]), a["nbytes"])
                for a in manifest.get("arrays", ())
            ),
        )

    # -- retention ---------------------------------------------------------

    def prune(self, *, dry_run: bool = False) -> list[int]:
        """Apply the retention policy now; the deleted steps, ascending.

        With ``dry_run=True`` nothing is deleted and the steps that would be
        are returned.
        """
        self._settle()
        return self._prune(known_good=None, dry_run=dry_run)

    def _prune(self, known_good: int | None, dry_run: bool = False) -> list[int]:
        listing = self._scan()
        doomed = self._doomed(listing.steps, known_good)
        if dry_run:
            return doomed
        for temp in listing.stale_temps:
            self._remove(temp)
        if listing.steps:
            with storage_errors(self.root_url):
                _s3.abort_uploads_of_existing(
                    self._root.fs, f"{self._root.path}/step-", {archive_name(s) for s in listing.steps}
                )
        return [s for s in doomed if self._remove(self.location_of(s).path)]

    def _doomed(self, steps: list[int], known_good: int | None) -> list[int]:
        """The steps the retention policy deletes; ``known_good`` passed the check."""
        if self.keep_last is None and self.keep_best is None:
            return []
        newest = steps[-self.keep_last :] if self.keep_last else []
        best = _retention.best(self._scores_of(steps), self.keep_best, self.mode) if self.keep_best else []
        keep = _retention.kept(steps, keep_last=self.keep_last, keep_every=self.keep_every, best_steps=best)
        doomed = [s for s in steps if s not in keep]
        if not doomed or known_good in newest:
            return doomed  # when known_good is kept, so is every newer step

        def check(step: int) -> None:
            if step != known_good:
                self._check(step)

        try:
            newest_good = self._first_passing(steps, check)
        except FileNotFoundError:
            return []  # a concurrent prune is at work; leave it to that one
        return [s for s in doomed if newest_good is None or s != newest_good[0]]

    def _scores_of(self, steps: list[int]) -> dict[int, float | None]:
        """``monitor``'s value in each step's manifest (None: no such metric, or
        damaged); manifests are read once per store."""
        assert self.monitor is not None
        for step in steps:
            if step not in self._scores:
                try:
                    self._scores[step] = _retention.metric_of(self._check(step).get("metadata") or {}, self.monitor)
                except ArchiveError:
                    self._scores[step] = None
                except FileNotFoundError:
                    continue  # pruned under us
        return {s: self._scores[s] for s in steps if s in self._scores}

    def _remove(self, path: str) -> bool:
        """Delete ``path``; False if it was already gone."""
        fs = self._root.fs
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            return False
        finally:
            fs.invalidate_cache(path)
        step = step_of(path.rpartition("/")[2])
        if step is not None:
            self._scores.pop(step, None)
        return True


def _is_own_temp(name: str) -> bool:
    """Whether ``name`` is an atomic-write temp of a checkpoint archive."""
    return is_temp_name(name) and step_of(name[1:].rsplit(".", 2)[0]) is not None


def _json_copy(metadata: dict[str, Any], url: str) -> dict[str, Any]:
    """A deep copy of JSON-able metadata, taken now (the caller may mutate theirs)."""
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{url}: checkpoint metadata is not JSON-serializable: {exc}") from None
