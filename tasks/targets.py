"""Luigi targets over fsspec: one checkpoint archive, one numpy-only snapshot.

Both are :class:`luigi.target.FileSystemTarget` subclasses, so Luigi treats
them like any file: ``exists()`` is the completion contract and
:class:`luigi.tools.range.RangeDaily` can find finished days with one listing
(it calls ``fs.exists`` and ``fs.listdir`` on a glob of the output paths).

Every check that decides something bypasses fsspec's listing cache, so an
object written by another process or machine is seen at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import luigi.target
import numpy as np
from fsspec.spec import AbstractFileSystem

from luigi_checkpoint.storage import archive, snapshot
from luigi_checkpoint.storage.fs import Location, atomic_write, resolve, url_of

__all__ = ["CheckpointTarget", "FsspecFileSystem", "FsspecTarget", "SnapshotTarget"]

_GLOB_CHARS = frozenset("*?[")


def _has_glob(path: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(path)


class FsspecFileSystem(luigi.target.FileSystem):
    """A :class:`luigi.target.FileSystem` over one fsspec filesystem.

    Paths given to and returned by its methods are URLs as produced by
    :func:`luigi_checkpoint.storage.fs.url_of` (plain absolute paths on local disk).
    ``exists`` and ``listdir`` accept glob patterns, as Luigi's range tools
    pass them; ``listdir`` lists every file under the matches, recursively.
    """

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fsspec = fs

    def _path(self, url: str) -> str:
        return self.fsspec._strip_protocol(url)

    def _url(self, path: str) -> str:
        return url_of(self.fsspec, path)

    def _matches(self, path: str) -> list[str]:
        # Globbing walks listings: drop every cached one first.
        self.fsspec.invalidate_cache()
        return sorted(self.fsspec.glob(path))

    def exists(self, path: str) -> bool:
        # docstring inherited
        stripped = self._path(path)
        if _has_glob(stripped):
            return bool(self._matches(stripped))
        self.fsspec.invalidate_cache(stripped)
        return self.fsspec.exists(stripped)

    def listdir(self, path: str) -> list[str]:
        # docstring inherited
        stripped = self._path(path)
        tops = self._matches(stripped) if _has_glob(stripped) else [stripped]
        self.fsspec.invalidate_cache()
        found: list[str] = []
        for top in tops:
            found.extend(self.fsspec.find(top))
        return [self._url(p) for p in sorted(set(found))]

    def isdir(self, path: str) -> bool:
        # docstring inherited
        stripped = self._path(path)
        self.fsspec.invalidate_cache(stripped)
        return self.fsspec.isdir(stripped)

    def remove(self, path: str, recursive: bool = True, skip_trash: bool = True) -> None:
        # docstring inherited
        self.fsspec.rm(self._path(path), recursive=recursive)

    def mkdir(self, path: str, parents: bool = True, raise_if_exists: bool = False) -> None:
        # docstring inherited
        stripped = self._path(path)
        if raise_if_exists and self.exists(path):
            raise luigi.target.FileAlreadyExists(path)
        if parents:
            self.fsspec.makedirs(stripped, exist_ok=True)
        else:
            self.fsspec.mkdir(stripped, create_parents=False)

    def move(self, path: str, dest: str) -> None:
        # docstring inherited
        self.fsspec.mv(self._path(path), self._path(dest))

    def copy(self, path: str, dest: str) -> None:
        # docstring inherited
        self.fsspec.copy(self._path(path), self._path(dest))


class FsspecTarget(luigi.target.FileSystemTarget):
    """A file at a path or URL on any fsspec filesystem.

    ``path`` is normalized to the URL form :class:`FsspecFileSystem` lists
    (an absolute path on local disk), so Luigi's bulk completion checks can
    compare listings with target paths.
    """

    def __init__(
        self, url: str | os.PathLike[str] | Location, *, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.location = resolve(url, dict(storage_options or {}))
        self._fs = FsspecFileSystem(self.location.fs)
        super().__init__(self.location.url)

    @property
    def fs(self) -> FsspecFileSystem:
        # docstring inherited
        return self._fs

    def open(self, mode: str = "r") -> Any:
        """Open for binary reading (``"r"``) or atomic binary writing (``"w"``).

        For ``"w"`` the returned context manager yields a file whose content
        appears at the path whole, and only when the ``with`` block succeeds.
        """
        if mode.startswith("r"):
            return self.location.fs.open(self.location.path, "rb")
        if mode.startswith("w"):
            return self._atomic_writer()
        raise ValueError(f"{self.path}: unsupported mode {mode!r} (use 'r' or 'w')")

    @contextmanager
    def _atomic_writer(self) -> Iterator[IO[bytes]]:
        with atomic_write(self.location) as f:
            yield f


class CheckpointTarget(FsspecTarget):
    """One checkpoint archive (``luigi_checkpoint.storage.archive`` format)."""

    def load(
        self,
        *,
        trusted: Iterable[Any] = (),
        renames: Mapping[str, str] | None = None,
        mmap: bool = False,
        unsafe: bool = False,
    ) -> Any:
        """Load the archived object safely; the options are those of
        :func:`luigi_checkpoint.storage.archive.load`."""
        return archive.load(self.location, trusted=trusted, renames=renames, mmap=mmap, unsafe=unsafe)

    def dump(
        self,
        obj: Any,
        *,
        compression: str = "stored",
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``obj`` atomically; returns the archive's manifest."""
        return archive.dump(obj, self.location, compression=compression, metadata=metadata)

    def manifest(self) -> dict[str, Any]:
        """The archive's manifest, read cheaply (no arrays, no pickle)."""
        return archive.read_manifest(self.location)


class SnapshotTarget(FsspecTarget):
    """One numpy-only snapshot (``luigi_checkpoint.storage.snapshot`` format)."""

    def load(self) -> dict[str, np.ndarray]:
        """Every array of the snapshot, checked against the manifest's sha256."""
        return snapshot.load_snapshot(self.location)
