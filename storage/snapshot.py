"""Numpy-only snapshots: the long-term format, readable with numpy alone.

A snapshot is a ZIP of ``<name>.npy`` members (names as in the checkpoint
archive, e.g. ``model/W.npy``) and a last member ``manifest.json``. There is no
pickle anywhere, so reading one cannot run code, and ``numpy.load`` reads it
completely::

    import numpy as np
    with np.load("snapshot.zip", allow_pickle=False) as snap:
        weights = snap["model/W"]          # snap.files lists every name

The manifest (JSON) holds ``format`` (``"luigi-checkpoint/snapshot"``),
``format_version``, ``created`` (ISO-8601 UTC), ``source`` (``{"url", "step"}``
of the checkpoint archive it came from, or null), user ``metadata`` and, per
array, ``name``, ``member``, ``dtype`` (``dtype.str``), ``shape``, ``nbytes``
and ``sha256`` (of the array's data: the bytes that follow the NPY header in
its member, in the order that header declares). Array data starts at a
64-byte aligned offset in the file.

``FORMAT_VERSION`` is bumped only when a reader of the previous version would
misread a new snapshot; readers keep accepting every older version.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from . import archive, _npy as npy
from .archive import Source
from .checkpoints import step_of
from .errors import ArchiveError, ChecksumError, MissingMemberError
from .fs import atomic_write, resolve, url_of
from ._reading import ArchiveSource, open_source, parse_manifest_json, read_npy
from ._zipwrite import ZipWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "load_snapshot",
    "read_snapshot_manifest",
    "save_snapshot",
    "snapshot_from_archive",
]

FORMAT = "luigi-checkpoint/snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def save_snapshot(
    arrays: Mapping[str, np.ndarray],
    dest: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
    *,
    source: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``arrays`` as a numpy-only snapshot at ``dest`` (path or URL).

    ``metadata`` must be JSON-serializable; ``source`` (``{"url", "step"}``)
    records the checkpoint the arrays came from. The snapshot appears whole or
    not at all. Returns the manifest.
    """
    fs, path = resolve(dest, storage_options)
    where = url_of(fs, path)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": archive._library_version(),
        "numpy_version": np.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "source": dict(source) if source is not None else None,
        "metadata": dict(metadata or {}),
        "arrays": [],
    }
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: metadata and source must be JSON-serializable: {exc}") from None
    with atomic_write(fs, path) as f:
        writer = ZipWriter(f)
        for name in arrays:  # arrays[name] is dropped once written: lazy mappings stream
            manifest["arrays"].append(
                _write_member(writer, name, _checked_array(where, name, arrays[name]))
            )
        text = json.dumps(manifest, indent=1).encode()
        writer.add(MANIFEST, [text], size=len(text))
        writer.close()
    return manifest


def load_snapshot(
    src: Source, *, storage_options: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Read every array of a snapshot (path, URL or open binary file),
    checking each against the manifest.

    Raises :class:`ChecksumError` naming the snapshot and the array when the
    bytes differ from the recorded SHA-256 (or the ZIP CRC), and another
    :class:`ArchiveError` subclass for any other malformed input. Nothing is
    ever unpickled: object arrays are refused.
    """
    with open_source(src, storage_options) as snapshot:
        entries = _manifest(snapshot)["arrays"]
        listed = {entry["member"] for entry in entries}
        extra = sorted(n for n in snapshot.reader.members if n != MANIFEST and n not in listed)
        if extra:
            raise ArchiveError(
                f"{snapshot.source}: members not in the manifest: {', '.join(extra)}"
            )
        return {entry["name"]: _read_member(snapshot, entry) for entry in entries}


def read_snapshot_manifest(
    src: Source, *, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest of a snapshot, reading only the ZIP directory and that member."""
    with open_source(src, storage_options) as snapshot:
        return _manifest(snapshot)


def snapshot_from_archive(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    select: str | Iterable[str] | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a snapshot of a checkpoint archive's arrays, without unpickling.

    Arrays are read by name straight from the archive's NPY members, one at a
    time as they are written, so an archive whose pickle references untrusted
    classes exports fine and memory holds one array, not the state. The
    source step is read from a ``step-<12 digits>.zip`` name (else None).
    ``select`` holds array names or :mod:`fnmatch` patterns (``"model/*"``);
    each must match at least one array. The snapshot's metadata is the
    archive's, updated with ``metadata``. Returns the snapshot's manifest.
    """
    fs, path = resolve(src, storage_options)
    where = url_of(fs, path)
    source_manifest = archive.read_manifest(src, storage_options=storage_options)
    names = _selected(where, [entry["name"] for entry in source_manifest["arrays"]], select)
    with open_source(src, storage_options) as checkpoint:
        return save_snapshot(
            _MemberArrays(checkpoint, names),
            dest,
            {**source_manifest.get("metadata", {}), **(metadata or {})},
            source={"url": where, "step": step_of(path.rpartition("/")[2])},
            storage_options=storage_options,
        )


class _MemberArrays(Mapping[str, np.ndarray]):
    """Arrays of an open archive, each read from its NPY member when asked for,
    so that an export holds one array in memory at a time."""

    def __init__(self, checkpoint: ArchiveSource, names: list[str]) -> None:
        self._checkpoint = checkpoint
        self._names = names

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return read_npy(self._checkpoint, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _selected(where: str, names: list[str], select: str | Iterable[str] | None) -> list[str]:
    if select is None:
        return names
    patterns = [select] if isinstance(select, str) else list(select)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise MissingMemberError(
            f"{where}: no array matches {', '.join(map(repr, unmatched))} "
            f"(arrays: {', '.join(names) or 'none'})"
        )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _checked_array(where: str, name: object, a: object) -> np.ndarray:
    if not isinstance(name, str) or not _valid_name(name):
        raise ValueError(f"{where}: invalid array name {name!r} (a relative 'a/b' path)")
    if not isinstance(a, (np.ndarray, np.generic)):
        raise TypeError(f"{where}: {name!r} is a {type(a).__name__}, not a numpy array")
    if a.dtype.hasobject:
        raise TypeError(f"{where}: {name!r} has dtype {a.dtype}, which needs pickle")
    return np.asarray(a)


def _valid_name(name: str) -> bool:
    """A relative ``a/b`` path that ``numpy.load`` cannot confuse with the manifest."""
    parts = name.split("/")
    return (
        name != MANIFEST
        and "\\" not in name
        and "\0" not in name
        and all(p not in ("", ".", "..") for p in parts)
    )


def _write_member(writer: ZipWriter, name: str, a: np.ndarray) -> dict[str, Any]:
    header = npy.header_bytes(a)
    digest = hashlib.sha256()

    def hashed_data() -> Iterator[bytes | memoryview]:
        yield header
        for chunk in npy.array_chunks(a):
            digest.update(chunk)
            yield chunk

    member = writer.add(
        f"{name}.npy", hashed_data(), size=len(header) + a.nbytes, align=npy.ALIGN
    )
    return {
        "name": name,
        "member": member.name,
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "nbytes": a.nbytes,
        "sha256": digest.hexdigest(),
    }


def _manifest(snapshot: ArchiveSource) -> dict[str, Any]:
    where = snapshot.source
    if MANIFEST not in snapshot.reader:
        raise MissingMemberError(f"{where}: no {MANIFEST}, not a snapshot")
    manifest = parse_manifest_json(snapshot.reader.read(MANIFEST), where)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArchiveError(f"{where}: not a snapshot (manifest format {found!r})")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise ArchiveError(
            f"{where}: snapshot format_version {manifest.get('format_version')!r} is not "
            f"supported (this library reads up to {FORMAT_VERSION})"
        )
    if not isinstance(manifest.get("arrays"), list) or not all(
        _valid_entry(e) for e in manifest["arrays"]
    ):
        raise ArchiveError(f"{where}: malformed array list in {MANIFEST}")
    return manifest


def _valid_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and entry.get("member") == f"{entry['name']}.npy"
        and isinstance(entry.get("dtype"), str)
        and isinstance(entry.get("shape"), list)
        and isinstance(entry.get("sha256"), str)
    )


def _read_member(snapshot: ArchiveSource, entry: dict[str, Any]) -> np.ndarray:
    what = f"{snapshot.source}: array {entry['name']!r}"
    if entry["member"] not in snapshot.reader:
        raise MissingMemberError(f"{what} is missing (no member {entry['member']})")
    a = read_npy(snapshot, entry["member"])
    if a.dtype.str != entry["dtype"] or list(a.shape) != entry["shape"]:
        raise ArchiveError(
            f"{what} is {a.dtype.str} {list(a.shape)}, the manifest says "
            f"{entry['dtype']} {entry['shape']}"
        )
    if _digest(a) != entry["sha256"]:
        raise ChecksumError(f"{what} does not match its SHA-256 in the manifest")
    return a


def _digest(a: np.ndarray) -> str:
    """SHA-256 of the data bytes of ``a`` in the order its NPY header declares."""
    stored = a.T if npy.writable_layout(a) else a
    return hashlib.sha256(np.ascontiguousarray(stored).reshape(-1).view(np.uint8)).hexdigest()
