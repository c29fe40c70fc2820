"""The checkpoint archive: one ZIP holding a pickle whose arrays are NPY members.

Layout, in order: one NPY member per distinct array (named by where it sits
in the object, no dots, no ``.npy``), ``pkl`` (the pickle; each array is the
persistent id ``ndarray.<member>``, each torch or JAX object
``torch.<member>`` or ``jax.<member>``), and ``manifest.json`` (whose entry of such a member
says what it was: :mod:`luigi_checkpoint.storage._frameworks`). Stored members'
array data starts at 64-byte aligned offsets. ``numpy.load`` reads the array
members, Theano's ``pkl_utils.load`` reads the whole, and :func:`load` reads
Theano's archives (``ndarray.``, ``cuda_ndarray.`` and ``gpuarray.`` ids).

:func:`open_archive` opens an archive once as an :class:`Archive` handle that
answers many questions (manifest, load, selected arrays, verify, audit) with
one directory read; the module functions open, ask one and close.

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
import pickletools
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, NoReturn

import numpy as np

from . import _frameworks as frameworks
from . import _manifest, _theano
from . import _npy as npy
from . import _trust as trust
from ._externalize import Frozen, freeze
from ._gcpause import paused
from ._reading import (
    ArchiveSource,
    NpyStream,
    Source,
    Unpickle,
    check_member,
    open_source,
    prefetch_npys,
    read_npy,
    read_small_npys,
)
from ._zipwrite import MANY, ZipWriter
from .errors import (
    ArchiveError,
    BadPersistentIdError,
    CorruptPickleError,
    MissingMemberError,
    UnloadableArchiveError,
    UntrustedTypeError,
)
from .fs import Location, atomic_write, resolve

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Archive",
    "Frozen",
    "audit",
    "check_trusted",
    "dump",
    "freeze",
    "load",
    "open_archive",
    "read_arrays",
    "read_manifest",
    "verify",
    "write_frozen",
]

FORMAT = "luigi-checkpoint/archive"
FORMAT_VERSION = 1
"""Bump when a reader of the previous version would misread an archive."""
PICKLE = "pkl"
MANIFEST = _manifest.MEMBER
ID_KINDS = ("ndarray", "cuda_ndarray", "gpuarray", *frameworks.KINDS)
_ARRAY_BUILDERS = ("multiarray._reconstruct", "numeric._frombuffer")
"""numpy's helpers that rebuild an array from data inside the pickle (beside
``numpy.ndarray`` itself and ``numpy.ma``)."""
_FRAMEWORK_MODULES = ("torch", "jax", "jaxlib", "cupy", "tensorflow")
BATCH = 4 << 20
"""Bytes of small arrays handed to :meth:`ZipWriter.add_many` at once: its numpy
work per call is amortized over more members (10,000 arrays of 13 KiB saved in
142 ms, against 159 ms in batches of 1 MiB)."""


def write_frozen(
    frozen: Frozen,
    file: IO[bytes],
    *,
    compression: str = "stored",
    metadata: Mapping[str, Any] | None = None,
    where: str = "archive",
) -> dict[str, Any]:
    """Write a :class:`Frozen` object to ``file`` sequentially; return the manifest.

    ``where`` names the destination in errors (unserializable ``metadata`` is
    refused before anything is written).
    """
    manifest = _manifest.new(
        "archive",
        FORMAT_VERSION,
        where,
        pickle_protocol=frozen.protocol,
        compression=compression,
        metadata=dict(metadata or {}),
        arrays=[],
    )
    writer = ZipWriter(file, compression=compression)
    headers, offsets = _write_arrays(writer, frozen.arrays)
    if compression != "stored":
        offsets = [None] * len(offsets)
    manifest["arrays"], listed = _array_entries(frozen, headers, offsets)
    writer.add(PICKLE, [frozen.pickle], size=len(frozen.pickle))
    text = _manifest.to_bytes(manifest, arrays=listed)
    writer.add(MANIFEST, [text], size=len(text))
    writer.close()
    return manifest


def _write_arrays(writer: ZipWriter, arrays: Iterable[tuple[str, np.ndarray]]) -> tuple[list[bytes], list[int]]:
    """Write each array as an NPY member, 64-byte aligned; return each one's
    NPY header and where its data starts. Runs of small contiguous arrays
    (below ``MANY`` bytes) go to the writer together
    (:meth:`ZipWriter.add_many`), up to ``BATCH`` bytes at a time."""
    headers: list[bytes] = []
    offsets: list[int] = []
    names: list[str] = []
    buffers: list[Any] = []
    sizes: list[int] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        batch = headers[len(offsets) :]
        starts = writer.add_many(names, batch, buffers, sizes=sizes, align=npy.ALIGN)
        offsets.extend(map(int.__add__, starts, map(len, batch)))
        names.clear()
        buffers.clear()
        sizes.clear()
        pending = 0

    for name, array in arrays:
        header, data = npy.header_and_data(array)
        size = len(header) + array.nbytes
        if data is None or size >= MANY:
            flush()
            headers.append(header)
            chunks = itertools.chain([header], npy.array_chunks(array))  # lazy: a strided array is copied piecewise
            offsets.append(writer.add(name, chunks, size=size, align=npy.ALIGN).data_offset + len(header))
            continue
        headers.append(header)
        names.append(name)
        buffers.append(data)
        sizes.append(size)
        pending += size
        if pending >= BATCH:
            flush()
    flush()
    return headers, offsets


def _array_entries(frozen: Frozen, headers: list[bytes], offsets: list[int | None]) -> tuple[list[dict[str, Any]], str]:
    """The manifest's entries of the arrays and their JSON text, as
    ``json.dumps`` writes it: the fields an NPY header decides are encoded once
    per header (a model's thousands of arrays have a few dozen)."""
    known: dict[bytes, tuple[str, tuple[int, ...], int, str]] = {}
    entries: list[dict[str, Any]] = []
    texts: list[str] = []
    quote = json.encoder.encode_basestring_ascii
    with paused():  # a dict and a list per array, no cycles
        for (name, array), header, offset in zip(frozen.arrays, headers, offsets):
            fields = known.get(header)
            if fields is None:
                dtype, shape, nbytes = array.dtype.str, array.shape, array.nbytes
                fields = known[header] = (
                    dtype, shape, nbytes, f'"dtype": {quote(dtype)}, "shape": {json.dumps(list(shape))}, "nbytes": {nbytes}, "offset": '
                )
            dtype, shape, nbytes, fragment = fields
            entry = {"name": name, "dtype": dtype, "shape": list(shape), "nbytes": nbytes, "offset": offset}
            entries.append(entry)
            extra = frozen.entries.get(name)
            if extra or offset is None:  # framework fields (what the member was), or no offset: json writes it
                entry.update(extra or {})
                texts.append(json.dumps(entry))
            else:
                texts.append(f'{{"name": {quote(name)}, {fragment}{offset}}}')
    return entries, f"[{', '.join(texts)}]"


def check_trusted(frozen: Frozen, trusted: Iterable[Any], where: str) -> None:
    """Raise :class:`UntrustedTypeError` if loading ``frozen`` with ``trusted``
    would refuse it (checked before writing, so no archive holds such a state)."""
    found = trust.audit_pickle(frozen.pickle, trusted=trusted, source=where)
    if found.untrusted:
        raise UntrustedTypeError(
            where, found.untrusted, "pass them in trusted=[...] when saving and loading", refusing="save"
        )


def dump(
    obj: Any,
    dest: Source,
    *,
    protocol: int = pickle.HIGHEST_PROTOCOL,
    compression: str = "stored",
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``obj`` as an archive at ``dest`` (path, URL, location or open binary file).

    A path or URL appears whole or not at all (a failure leaves any previous
    file untouched and no temp file); an open file is written sequentially,
    never seeked. Returns the manifest.
    """
    frozen = freeze(obj, protocol=protocol, copy=False)
    if isinstance(dest, (str, os.PathLike, Location)):
        target = resolve(dest, storage_options)
        with atomic_write(target) as f:
            return write_frozen(frozen, f, compression=compression, metadata=metadata, where=target.url)
    return write_frozen(frozen, dest, compression=compression, metadata=metadata, where=repr(dest))


class Archive:
    """An open checkpoint archive (ours or Theano's): its directory is read
    once, then it answers any number of questions.

    Use it as a context manager (or call :meth:`close`); made by
    :func:`open_archive`. ``source`` names it (a URL or path), ``size`` is its
    length in bytes.
    """

    def __init__(self, opened: ArchiveSource) -> None:
        self._source = opened
        self._manifest: dict[str, Any] | None = None
        self._entries: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"<Archive {self.source}>"

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file the archive was opened from (unless the caller gave it)."""
        self._source.close()

    @property
    def source(self) -> str:
        """The archive's URL, path or (for an open file) repr, as errors name it."""
        return self._source.source

    @property
    def size(self) -> int:
        """The archive's size in bytes."""
        return self._source.size

    def manifest(self) -> dict[str, Any]:
        """The manifest, after the cheap consistency check: the directory and
        the manifest agree (no array data is read). Raises :class:`ArchiveError`."""
        if self._manifest is None:
            with self._source.errors():
                self._manifest = _checked_manifest(self._source)
        return self._manifest

    def load(
        self,
        *,
        trusted: Iterable[Any] = (),
        renames: Mapping[str, str] | None = None,
        unsafe: bool = False,
        map_location: Any = None,
        as_numpy: bool = False,
    ) -> Any:
        """The archived object, loaded safely; see :mod:`luigi_checkpoint.storage._trust`.

        Framework arrays (torch tensors, parameters, generators; JAX arrays
        and keys) load as what they were, torch's on the device
        ``map_location`` (default CPU), JAX's on its default device, or as
        the numpy arrays their members hold with ``as_numpy=True`` (also, with
        a warning, when the framework is not installed); see
        :mod:`luigi_checkpoint.storage._frameworks`.
        """
        archive = self._source
        loaded: dict[str, Any] = {}
        unpickle = _unpickle_object_array(renames) if unsafe else _refuse_object_array
        restorer = frameworks.Restorer(archive.source, map_location=map_location, as_numpy=as_numpy)
        # Ours (a manifest: every other member is an NPY): its small arrays are
        # read together, and on an object store its large ones fetched together,
        # concurrently, before unpickling.
        reader = archive.reader
        names = [n for n in reader.members if n not in (PICKLE, MANIFEST)] if MANIFEST in reader else []
        fetched = prefetch_npys(archive, names) | read_small_npys(archive, names)
        plain = {f"ndarray.{name}": array for name, array in fetched.items()}  # by persistent id

        def persistent_load(pid: Any) -> Any:
            array = plain.pop(pid, None) if type(pid) is str else None
            if array is not None:  # the usual array, met for the first time
                loaded[pid[len("ndarray.") :]] = array
                return array
            kind, name = _parse_id(archive, pid)
            if name in loaded:
                return loaded[name]
            if kind in frameworks.KINDS:
                entry = self._entry(name)
                plain.pop(f"ndarray.{name}", None)  # the member is the framework's array now
                array = fetched.pop(name, None)
                if array is None:
                    allocate = restorer.allocator(kind)
                    array = read_npy(archive, name, unpickle=_refuse_object_array, allocate=allocate)
                loaded[name] = restorer.restore(kind, name, array, entry)
            elif kind == "gpuarray":
                loaded[name] = read_npy(archive, name, stream=self._gpuarray(name, True), unpickle=unpickle)
            elif name in fetched:
                loaded[name] = fetched.pop(name)
            else:
                loaded[name] = read_npy(archive, name, unpickle=unpickle)
            return loaded[name]

        with archive.errors():
            return trust.load_pickle(
                archive.reader.read(PICKLE),
                source=archive.source,
                trusted=trusted,
                renames=renames,
                unsafe=unsafe,
                persistent_load=persistent_load,
            )

    def _entry(self, name: str) -> dict[str, Any] | None:
        """The manifest entry of array member ``name`` (None: not listed)."""
        if self._entries is None:
            listed = self.manifest()["arrays"] if MANIFEST in self._source.reader else []
            self._entries = {entry["name"]: entry for entry in listed}
        return self._entries.get(name)

    def read_arrays(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays by member name, straight from the NPY members (nothing unpickled).

        ``names=None`` reads every array member: those the manifest lists or,
        in an archive without one (Theano's), every member but ``pkl``.
        """
        return {name: self.read_array(name) for name in self.array_names(names)}

    def array_names(self, names: Iterable[str] | None = None) -> list[str]:
        """``names`` after checking each is a member; for None, every array member."""
        reader = self._source.reader
        if names is not None:
            wanted = list(names)
            for name in wanted:
                reader.member(name)
            return wanted
        if MANIFEST in reader:
            return [entry["name"] for entry in self.manifest()["arrays"]]
        return [name for name in reader.members if name != PICKLE]

    def read_array(self, name: str) -> np.ndarray:
        """The array in member ``name``, read into fresh memory (or mapped)."""
        return read_npy(self._source, name, stream=self._gpuarray(name), unpickle=_refuse_object_array)

    def verify(self) -> list[str]:
        """Check every member's CRC-32 and NPY header, the manifest and the
        persistent ids; return the problems found (empty: the archive is good)."""
        archive = self._source
        reader = archive.reader
        with archive.errors():
            problems = [
                problem
                for name in reader.members
                if (problem := _problem(lambda name=name: self._check_member(name)))
            ]
            if PICKLE not in reader:
                return [*problems, f"{archive.source}: no member {PICKLE!r}"]
            if MANIFEST in reader:
                problems += filter(None, [_problem(self.manifest)])
            problems += filter(None, [_problem(lambda: _check_ids(archive))])
            return problems

    def audit(
        self, *, trusted: Iterable[Any] = (), renames: Mapping[str, str] | None = None
    ) -> trust.Audit:
        """Every global the archive's pickle would import, and which are untrusted."""
        with self._source.errors():
            data = self._source.reader.read(PICKLE)
            return trust.audit_pickle(data, trusted=trusted, renames=renames, source=self.source)

    def hidden_arrays(self) -> list[str]:
        """Globals of the pickle that build array data inside it, not from a
        member: numpy's array reconstructors (object arrays, ndarray subclasses)
        and framework code (tensors pickled by their framework). Empty when
        every array of the state is a member."""
        return [
            name for name in self.audit().globals
            if name == "numpy.ndarray"
            or name.startswith("numpy.ma.")
            or (name.startswith("numpy.") and name.endswith(_ARRAY_BUILDERS))
            or name.split(".", 1)[0] in _FRAMEWORK_MODULES
        ]

    def _check_member(self, name: str) -> None:
        array = name not in (PICKLE, MANIFEST)
        check_member(self._source, name, self._gpuarray(name) if array else None, array=array)

    def _gpuarray(self, name: str, known: bool | None = None) -> NpyStream | None:
        """For a Theano ``gpuarray`` member, the NPY stream after its context
        name; None for a plain NPY member. ``known`` comes from the persistent
        id; without it only Theano's archives (no manifest) are looked into."""
        reader = self._source.reader
        with self._source.errors():
            if known is None:
                known = MANIFEST not in reader and _theano.has_context_prefix(reader, name)
            if not known:
                return None
            return _theano.npy_stream(reader.open(name), f"{self.source}: member {name!r}")


def open_archive(
    src: Source, *, mmap: bool = False, storage_options: dict[str, Any] | None = None
) -> Archive:
    """Open an archive (path, URL, location or open binary file) once.

    ``mmap=True`` maps stored arrays of a local archive read-only instead of
    reading them (falls back to reading elsewhere). Raises FileNotFoundError,
    :class:`StorageError` or :class:`ArchiveError`.
    """
    return Archive(open_source(src, storage_options, map_file=mmap))


def load(
    src: Source,
    *,
    trusted: Iterable[Any] = (),
    renames: Mapping[str, str] | None = None,
    mmap: bool = False,
    unsafe: bool = False,
    map_location: Any = None,
    as_numpy: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Load an archive (ours or Theano's) safely; see :meth:`Archive.load`.

    ``mmap=True`` maps stored numpy arrays of a local archive read-only instead
    of reading them (falls back to reading elsewhere; torch tensors always own
    their memory). ``map_location`` and ``as_numpy`` choose what framework
    arrays load as.
    """
    with open_archive(src, mmap=mmap, storage_options=storage_options) as archive:
        return archive.load(
            trusted=trusted, renames=renames, unsafe=unsafe, map_location=map_location, as_numpy=as_numpy
        )


def read_manifest(src: Source, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest, after a cheap consistency check (directory and manifest only)."""
    with open_archive(src, storage_options=storage_options) as archive:
        return archive.manifest()


def verify(src: Source, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Check every member's CRC-32 and NPY header; return the problems found."""
    try:
        with open_archive(src, storage_options=storage_options) as archive:
            return archive.verify()
    except ArchiveError as exc:
        return [str(exc)]


def read_arrays(
    src: Source,
    names: Iterable[str] | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays by member name, straight from the NPY members; see :meth:`Archive.read_arrays`."""
    with open_archive(src, storage_options=storage_options) as archive:
        return archive.read_arrays(names)


def audit(
    src: Source,
    *,
    trusted: Iterable[Any] = (),
    renames: Mapping[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> trust.Audit:
    """Every global the archive's pickle would import, and which are untrusted."""
    with open_archive(src, storage_options=storage_options) as archive:
        return archive.audit(trusted=trusted, renames=renames)


def _unpickle_object_array(renames: Mapping[str, str] | None) -> Unpickle:
    """Unpickles the data of an object array member (Theano's ``pkl_utils``
    saved object arrays with ``numpy.save``'s pickling) through the loader the
    archive's own pickle goes through: only for ``unsafe`` loads."""
    return lambda data, where: trust.load_pickle(data, source=where, renames=renames, unsafe=True)


def _refuse_object_array(data: bytes, where: str) -> NoReturn:
    raise UnloadableArchiveError(
        f"{where} holds an object array, whose data is a pickle: safe loading never unpickles "
        "array data (load(..., unsafe=True) reads it, if you trust the archive)"
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


def _checked_manifest(archive: ArchiveSource) -> dict[str, Any]:
    reader = archive.reader
    data = reader.read(MANIFEST) if MANIFEST in reader else None
    manifest = _manifest.parse(data, archive.source, kind="archive", version=FORMAT_VERSION)
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


def _problem(check: Any) -> str | None:
    try:
        check()
    except (ArchiveError, UnloadableArchiveError) as exc:
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
