"""The checkpoint archive: one ZIP holding a pickle whose arrays are NPY members.

Layout, in order: one NPY member per distinct array (named by where it sits
in the object, no dots, no ``.npy``), ``pkl`` (the pickle; each array is the
persistent id ``ndarray.<member>``), and ``manifest.json``. Stored members'
array data starts at 64-byte aligned offsets. ``numpy.load`` reads the array
members, Theano's ``pkl_utils.load`` reads the whole, and :func:`load` reads
Theano's archives (``ndarray.``, ``cuda_ndarray.`` and ``gpuarray.`` ids).

``load(..., mmap=True)`` maps stored members of an archive on local disk as
read-only arrays, with no copy and no CRC check (:func:`verify` checks them);
DEFLATE members and archives elsewhere (S3, memory, open files) are read into
fresh memory instead.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import platform
import pickletools
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import IO, Any

import numpy as np

from . import _npy as npy, _trust as trust
from .errors import ArchiveError, BadPersistentIdError, CorruptPickleError, MissingMemberError
from ._externalize import Frozen, freeze
from .fs import atomic_write, resolve
from ._npy import ALIGN
from ._reading import ArchiveSource, check_member, open_source, parse_manifest_json, read_npy
from ._zipwrite import ZipWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Frozen",
    "audit",
    "dump",
    "freeze",
    "load",
    "read_arrays",
    "read_manifest",
    "verify",
    "write_frozen",
]

FORMAT = "luigi-checkpoint/archive"
FORMAT_VERSION = 1
"""Bump when a reader of the previous version would misread an archive."""
PICKLE = "pkl"
MANIFEST = "manifest.json"
ID_KINDS = ("ndarray", "cuda_ndarray", "gpuarray")
Source = str | os.PathLike[str] | IO[bytes]


def _library_version() -> str:
    try:
        return importlib_metadata.version("luigi-checkpoint")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def write_frozen(
    frozen: Frozen,
    file: IO[bytes],
    *,
    compression: str = "stored",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a :class:`Frozen` object to ``file`` sequentially; return the manifest."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "created": datetime.now(timezone.utc).isoformat(),
        "pickle_protocol": frozen.protocol,
        "compression": compression,
        "metadata": dict(metadata or {}),
        "arrays": [],
    }
    json.dumps(manifest["metadata"])  # refuse unserializable metadata before writing
    writer = ZipWriter(file, compression=compression)
    for name, array in frozen.arrays:
        header = npy.header_bytes(array)
        member = writer.add(
            name,
            itertools.chain([header], npy.array_chunks(array)),
            size=len(header) + array.nbytes,
            align=ALIGN,
        )
        manifest["arrays"].append(
            {
                "name": name,
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "nbytes": int(array.nbytes),
                "offset": member.data_offset + len(header) if member.method == 0 else None,
            }
        )
    writer.add(PICKLE, [frozen.pickle], size=len(frozen.pickle))
    text = json.dumps(manifest, indent=1).encode("utf8")
    writer.add(MANIFEST, [text], size=len(text))
    writer.close()
    return manifest


def dump(
    obj: Any,
    dest: Source,
    *,
    protocol: int = pickle.HIGHEST_PROTOCOL,
    compression: str = "stored",
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``obj`` as an archive at ``dest`` (path, URL or open binary file).

    A path or URL appears whole or not at all (a failure leaves any previous
    file untouched and no temp file); an open file is written sequentially,
    never seeked. Returns the manifest.
    """
    frozen = freeze(obj, protocol=protocol, copy=False)
    if isinstance(dest, (str, os.PathLike)):
        fs, path = resolve(dest, storage_options)
        with atomic_write(fs, path) as f:
            return write_frozen(frozen, f, compression=compression, metadata=metadata)
    return write_frozen(frozen, dest, compression=compression, metadata=metadata)


def load(
    src: Source,
    *,
    trusted: Iterable[Any] = (),
    renames: Mapping[str, str] | None = None,
    mmap: bool = False,
    unsafe: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Load an archive (ours or Theano's) safely; see :mod:`luigi_checkpoint.storage._trust`.

    ``mmap=True`` maps stored arrays of a local archive read-only instead of
    reading them (falls back to reading elsewhere).
    """
    with open_source(src, storage_options, mmap=mmap) as archive:
        data = archive.reader.read(PICKLE)
        arrays: dict[str, np.ndarray] = {}

        def persistent_load(pid: Any) -> np.ndarray:
            kind, name = _parse_id(archive, pid)
            if name not in arrays:
                arrays[name] = read_npy(archive, name, context_prefix=kind == "gpuarray")
            return arrays[name]

        return trust.load_pickle(
            data,
            source=archive.source,
            trusted=trusted,
            renames=renames,
            unsafe=unsafe,
            persistent_load=persistent_load,
        )


def _parse_id(archive: ArchiveSource, pid: Any) -> tuple[str, str]:
    if isinstance(pid, bytes):
        pid = pid.decode("latin1")
    if not isinstance(pid, str) or "." not in pid:
        raise BadPersistentIdError(f"{archive.source}: bad persistent id {pid!r}")
    kind, name = pid.split(".", 1)
    if kind not in ID_KINDS:
        raise BadPersistentIdError(
            f"{archive.source}: persistent id {pid!r} of unknown kind {kind!r}"
        )
    if name not in archive.reader:
        raise MissingMemberError(
            f"{archive.source}: persistent id {pid!r} names a missing member {name!r}"
        )
    return kind, name


def read_manifest(src: Source, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest, after a cheap consistency check (directory and manifest only)."""
    with open_source(src, storage_options) as archive:
        return _checked_manifest(archive)


def _checked_manifest(archive: ArchiveSource) -> dict[str, Any]:
    reader = archive.reader
    manifest = parse_manifest_json(reader.read(MANIFEST), archive.source)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{archive.source}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArchiveError(
            f"{archive.source}: format version {version!r} is newer than this reader "
            f"({FORMAT_VERSION}); upgrade luigi-checkpoint"
        )
    reader.member(PICKLE)
    entries = manifest.get("arrays")
    if not isinstance(entries, list):
        raise ArchiveError(f"{archive.source}: {MANIFEST} has no list of arrays")
    for entry in entries:
        _check_entry(archive, entry)
    expected = {e["name"] for e in entries} | {PICKLE, MANIFEST}
    if set(reader.members) != expected:
        extra = sorted(set(reader.members) - expected)
        raise ArchiveError(
            f"{archive.source}: members disagree with {MANIFEST}: "
            f"unlisted {extra}, missing {sorted(expected - set(reader.members))}"
        )
    return manifest


def _check_entry(archive: ArchiveSource, entry: Any) -> None:
    where = f"{archive.source}: {MANIFEST} entry {entry!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ArchiveError(f"{where} has no name")
    nbytes, offset = entry.get("nbytes"), entry.get("offset")
    if not isinstance(nbytes, int) or not isinstance(entry.get("shape"), list):
        raise ArchiveError(f"{where} lacks shape or nbytes")
    member = archive.reader.member(entry["name"])
    if nbytes > member.size:
        raise ArchiveError(f"{where}: {nbytes} bytes do not fit a member of {member.size}")
    if offset is not None and (
        not isinstance(offset, int)
        or offset <= member.header_offset
        or offset + nbytes > member.limit
    ):
        raise ArchiveError(f"{where}: offset lies outside its member")


def verify(src: Source, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Check every member's CRC-32 and NPY header; return the problems found."""
    try:
        with open_source(src, storage_options) as archive:
            problems = [
                problem
                for name in archive.reader.members
                if (problem := _problem(lambda name=name: _check_member(archive, name)))
            ]
            if PICKLE not in archive.reader:
                return [*problems, f"{archive.source}: no member {PICKLE!r}"]
            if MANIFEST in archive.reader:
                problems += filter(None, [_problem(lambda: _checked_manifest(archive))])
            problems += filter(None, [_problem(lambda: _check_ids(archive))])
            return problems
    except ArchiveError as exc:
        return [str(exc)]


def _check_member(archive: ArchiveSource, name: str) -> None:
    array = name not in (PICKLE, MANIFEST)
    prefix = array and _starts_with_pickle(archive, name)
    check_member(archive, name, array=array, context_prefix=prefix)


def _problem(check: Any) -> str | None:
    try:
        check()
    except ArchiveError as exc:
        return str(exc)
    return None


def _check_ids(archive: ArchiveSource) -> None:
    """Every persistent id in the pickle names an existing member."""
    data = archive.reader.read(PICKLE)
    memo: dict[int, Any] = {}
    last: Any = None
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "PERSID":
                _parse_id(archive, arg)
            elif opcode.name == "BINPERSID":
                _parse_id(archive, last)
            if opcode.name == "MEMOIZE":
                memo[len(memo)] = last
            elif opcode.name.endswith("PUT"):
                memo[arg] = last
            elif opcode.name.endswith("GET"):
                last = memo.get(arg)
            else:
                last = arg if isinstance(arg, (str, bytes)) else None
    except ArchiveError:
        raise
    except (ValueError, EOFError) as exc:
        raise CorruptPickleError(f"{archive.source}: malformed pickle: {exc}") from None


def read_arrays(
    src: Source,
    names: Iterable[str] | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays by member name, straight from the NPY members (nothing unpickled).

    ``names=None`` reads every array member: those the manifest lists or,
    in an archive without one (Theano's), every member but ``pkl``; there a
    member starting with a pickle is a ``gpuarray`` one (context name first).
    """
    with open_source(src, storage_options) as archive:
        reader = archive.reader
        if names is not None:
            wanted = list(names)
            for name in wanted:
                reader.member(name)
        elif MANIFEST in reader:
            wanted = [entry["name"] for entry in _checked_manifest(archive)["arrays"]]
        else:
            wanted = [name for name in reader.members if name != PICKLE]
        return {
            name: read_npy(archive, name, context_prefix=_starts_with_pickle(archive, name))
            for name in wanted
        }


def _starts_with_pickle(archive: ArchiveSource, name: str) -> bool:
    stream = archive.reader.open(name)
    return stream.read(min(2, stream.remaining)) == pickle.PROTO + b"\x02"


def audit(
    src: Source,
    *,
    trusted: Iterable[Any] = (),
    renames: Mapping[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> trust.Audit:
    """Every global the archive's pickle would import, and which are untrusted."""
    with open_source(src, storage_options) as archive:
        return trust.audit_pickle(
            archive.reader.read(PICKLE), trusted=trusted, renames=renames, source=archive.source
        )

