"""Numpy-only snapshots: the long-term format, readable with numpy alone.

A snapshot is a ZIP of ``<name>.npy`` members (names as in the checkpoint
archive, e.g. ``model/W.npy``) and a last member ``manifest.json``. There is no
pickle anywhere, so reading one cannot run code, and ``numpy.load`` reads it
completely::

    import numpy as np
    with np.load("snapshot.zip", allow_pickle=False) as snap:
        weights = snap["model/W"]          # snap.files lists every name

The manifest (JSON, see :mod:`._manifest`) holds ``format``
(``"luigi-checkpoint/snapshot"``), ``format_version``, ``created`` (ISO-8601
UTC), the library, Python and numpy versions, ``source`` (``{"url", "step"}``
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
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from . import _manifest
from . import _npy as npy
from ._reading import ArchiveSource, Source, open_source, read_npy
from ._zipwrite import ZipWriter
from .archive import Archive, open_archive
from .errors import ArchiveError, ChecksumError, HiddenArraysError, MissingMemberError
from .fs import Location, atomic_write, resolve

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
MANIFEST = _manifest.MEMBER


def save_snapshot(
    arrays: Mapping[str, np.ndarray],
    dest: str | os.PathLike[str] | Location,
    metadata: Mapping[str, Any] | None = None,
    *,
    source: Mapping[str, Any] | None = None,
    described: Mapping[str, Mapping[str, Any]] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``arrays`` as a numpy-only snapshot at ``dest`` (path, URL or location).

    ``metadata`` must be JSON-serializable; ``source`` (``{"url", "step"}``)
    records the checkpoint the arrays came from; ``described`` adds fields to
    the manifest entries of arrays by name (a framework array's ``framework``
    and ``framework_dtype``). The snapshot appears whole or not at all.
    Returns the manifest.
    """
    target = resolve(dest, storage_options)
    where = target.url
    manifest = _manifest.new(
        "snapshot",
        FORMAT_VERSION,
        where,
        source=dict(source) if source is not None else None,
        metadata=dict(metadata or {}),
        arrays=[],
    )
    with atomic_write(target) as f:
        writer = ZipWriter(f)
        for name in arrays:  # arrays[name] is dropped once written: lazy mappings stream
            entry = _write_member(writer, name, _checked_array(where, name, arrays[name]))
            manifest["arrays"].append({**entry, **(described or {}).get(name, {})})
        text = _manifest.to_bytes(manifest)
        writer.add(MANIFEST, [text], size=len(text))
        writer.close()
    return manifest


def load_snapshot(
    src: Source, *, storage_options: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Read every array of a snapshot (path, URL, location or open binary file),
    checking each against the manifest.

    Raises :class:`ChecksumError` naming the snapshot and the array when the
    bytes differ from the recorded SHA-256 (or the ZIP CRC), and another
    :class:`ArchiveError` subclass for any other malformed input. Nothing is
    ever unpickled: object arrays are refused.
    """
    with open_source(src, storage_options) as snapshot, snapshot.errors():
        entries = _checked_manifest(snapshot)["arrays"]
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
    with open_source(src, storage_options) as snapshot, snapshot.errors():
        return _checked_manifest(snapshot)


def snapshot_from_archive(
    src: Source | Archive,
    dest: str | os.PathLike[str] | Location,
    select: str | Iterable[str] | None = None,
    *,
    step: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a snapshot of a checkpoint archive's arrays, without unpickling.

    ``src`` is an archive (path, URL, location, open file) or an open
    :class:`~luigi_checkpoint.storage.archive.Archive`, which is read through
    as it is. Arrays are read by name straight from the archive's NPY members,
    one at a time as they are written, so an archive whose pickle references
    untrusted classes exports fine and memory holds one array, not the state.
    ``step`` is recorded as the source's step (None: unknown). ``select``
    holds array names or :mod:`fnmatch` patterns (``"model/*"``); each must
    match at least one array. The snapshot's metadata is the archive's,
    updated with ``metadata``. ``storage_options`` go with the URLs given.
    Framework arrays keep their ``framework`` and ``framework_dtype`` in the
    snapshot's manifest (a bfloat16 tensor's member holds its bits as ``<u2``).
    Returns the snapshot's manifest.

    Raises :class:`HiddenArraysError` naming the globals that build them when,
    without ``select``, the archive's pickle holds array data that is not a
    member (the snapshot would silently lack it): write the state again with
    this version (torch tensors become members) or ``select`` the members wanted.
    """
    if not isinstance(src, Archive):
        with open_archive(src, storage_options=storage_options) as opened:
            return snapshot_from_archive(
                opened, dest, select, step=step, metadata=metadata, storage_options=storage_options
            )
    source_manifest = src.manifest()
    hidden = src.hidden_arrays() if select is None else []
    if hidden:
        raise HiddenArraysError(
            f"{src.source}: refusing to export: its pickle holds array data that is not an "
            f"array member, built by {', '.join(hidden)}; a snapshot would lack it. Load the "
            "checkpoint and save it again with this version (torch tensors become members), "
            "or select the members to export (select=..., ckpt export --select)"
        )
    names = _selected(src.source, [entry["name"] for entry in source_manifest["arrays"]], select)
    return save_snapshot(
        _MemberArrays(src, names),
        dest,
        {**source_manifest.get("metadata", {}), **(metadata or {})},
        source={"url": src.source, "step": step},
        described={e["name"]: _framework_fields(e) for e in source_manifest["arrays"] if "framework" in e},
        storage_options=storage_options,
    )


def _framework_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: entry[key] for key in ("framework", "type", "framework_dtype") if key in entry}


class _MemberArrays(Mapping[str, np.ndarray]):
    """Arrays of an open archive, each read from its NPY member when asked for,
    so that an export holds one array in memory at a time."""

    def __init__(self, checkpoint: Archive, names: list[str]) -> None:
        self._checkpoint = checkpoint
        self._names = names

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._checkpoint.read_array(name)

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


def _checked_manifest(snapshot: ArchiveSource) -> dict[str, Any]:
    where = snapshot.source
    data = snapshot.reader.read(MANIFEST) if MANIFEST in snapshot.reader else None
    manifest = _manifest.parse(data, where, kind="snapshot", version=FORMAT_VERSION)
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
    stored = a.T if npy.is_written_fortran(a) else a
    return hashlib.sha256(np.ascontiguousarray(stored).reshape(-1).view(np.uint8)).hexdigest()
