"""Opening ZIP sources (archives and snapshots) and reading their NPY members.

:func:`open_source` turns a path, URL, :class:`~luigi_checkpoint.storage.fs.Location`
or open binary file into an open :class:`ArchiveSource`: a validated
:class:`~luigi_checkpoint.storage._zipread.ZipReader` over it. Under
:meth:`ArchiveSource.errors` any low-level parsing error becomes an
:class:`ArchiveError` naming the source, and any transport failure (a reset
connection, a response cut short, an S3 error) a :class:`StorageError` naming
it: a read that failed says nothing about the archive's bytes. :func:`read_npy`
reads one NPY member into a fresh array with a single ``readinto`` (or maps
it, for stored members of a local archive opened with ``map_file=True``),
validating the header against the member's size before allocating.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import IO, Any, Protocol

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from . import _npy as npy
from ._s3read import S3Ranges, streams_ranges
from ._transfer import BufferedRanges
from ._zipread import READ_BLOCK, SMALL_MEMBER, MemberStream, Run, ZipReader
from .errors import ArchiveError, BadNpyHeaderError, CheckpointError, NotAnArchiveError
from .fs import Location, as_storage_error, resolve

__all__ = [
    "Allocate", "ArchiveSource", "NpyStream", "Source", "Unpickle", "check_member", "open_source",
    "prefetch_npys", "read_npy", "read_small_npys",
]

REMOTE_BLOCK = 256 << 10  # read-ahead of remote files beyond each request
REMOTE_READ = 64 << 20  # one range request of array data (and its temporary copy)

Source = str | os.PathLike[str] | Location | IO[bytes]
"""Where an archive or snapshot is read from: a path, URL, location or open binary file."""

Unpickle = Callable[[bytes, str], Any]
"""Turns the pickled data of an object array member into the array (or refuses
it); the string names the member for messages."""

Allocate = Callable[[tuple[int, ...], np.dtype, str], np.ndarray]
"""Fresh memory for an array: ``(shape, dtype, order)``, as :func:`numpy.empty` takes them."""


class NpyStream(Protocol):
    """Sequential reads of one member's NPY bytes (a
    :class:`~luigi_checkpoint.storage._zipread.MemberStream` or an adapter)."""

    @property
    def remaining(self) -> int: ...

    def read(self, size: int) -> bytes: ...

    def readinto(self, view: memoryview) -> int: ...

    def finish(self) -> None: ...


class ArchiveSource:
    """An open ZIP: its directory (``reader``), its name for messages
    (``source``), its size in bytes and, when opened with ``map_file=True`` on
    local disk, a read-only map of the whole file (``mapping``).

    Closing it closes the file it opened (an open file given by the caller
    stays open).
    """

    def __init__(
        self, reader: ZipReader, source: str, size: int, *, file: IO[bytes] | None, mapping: mmap.mmap | None
    ) -> None:
        self.reader = reader
        self.source = source
        self.size = size
        self.mapping = mapping
        self._file = file

    def close(self) -> None:
        """Close the file this source opened (a map stays while arrays use it)."""
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def errors(self) -> AbstractContextManager[None]:
        """A context in which parse errors become ArchiveError and transport
        failures StorageError, both naming this source."""
        return _ReadingErrors(self.source)


def open_source(
    src: Source, storage_options: dict[str, Any] | None = None, *, map_file: bool = False
) -> ArchiveSource:
    """Open ``src`` and read its ZIP directory.

    Raises :class:`StorageError` when reading fails, FileNotFoundError when
    there is nothing at ``src``, and :class:`ArchiveError` when the bytes are
    malformed.
    """
    if not isinstance(src, (str, os.PathLike, Location)):
        source = repr(src)
        with _ReadingErrors(source):
            seekable = getattr(src, "seekable", None)  # zipfile needs only read, seek and tell
            if seekable is not None and not seekable():
                raise NotAnArchiveError(f"{source}: cannot be read as a ZIP archive: it is not "
                                        "seekable (a pipe or socket?)")
            return ArchiveSource(ZipReader(src, source=source), source, src.seek(0, 2), file=None, mapping=None)
    location = resolve(src, storage_options)
    local = isinstance(location.fs, LocalFileSystem)
    options = {} if local else {"block_size": REMOTE_BLOCK, "cache_type": "readahead"}
    with _ReadingErrors(location.url):
        if local:
            _check_regular(location.path)
        f = location.fs.open(location.path, "rb", **options)
        try:
            reader = ZipReader(f, source=location.url, **({} if local else _remote_reading(f, location)))
            # The same open file the directory was read from, so a concurrent
            # replacement of the path cannot swap the bytes under the reader.
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if map_file and local else None
            return ArchiveSource(reader, location.url, f.seek(0, 2), file=f, mapping=mapping)
        except BaseException:
            f.close()
            raise


def _remote_reading(f: IO[bytes], location: Location) -> dict[str, Any]:
    """How a remote file's stored data is read: in large blocks and, for a
    buffered object-store file, in concurrent range requests of that same file,
    which ask for the version it opened (a replaced object fails the read
    instead of mixing): streamed into the arrays on S3 (:mod:`._s3read`),
    else through ``_fetch_range``, fsspec's hook for its caches."""
    options: dict[str, Any] = {"block_size": REMOTE_READ}
    if streams_ranges(f):
        options.update(ranges=S3Ranges(f), transfer=location.transfer)
    elif isinstance(f, AbstractBufferedFile):
        options.update(ranges=BufferedRanges(f._fetch_range), transfer=location.transfer)
    return options


def _check_regular(path: str) -> None:
    """Refuse a local path that is not a regular file before opening it: opening
    a FIFO blocks until a writer comes, and a device or socket never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # the open reports it
    if not stat.S_ISREG(mode):
        raise NotAnArchiveError(f"{path}: cannot be read as a ZIP archive: it is not a regular "
                                f"file (a {_kind(mode)})")


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "directory", stat.S_ISFIFO: "FIFO", stat.S_ISSOCK: "socket",
             stat.S_ISCHR: "character device", stat.S_ISBLK: "block device"}
    return next((kind for test, kind in kinds.items() if test(mode)), "special file")


class _ReadingErrors:
    """Transport failures become StorageError first (some are ValueErrors
    too: SSL certificate and invalid URL errors), then parse errors ArchiveError.
    A class, not a generator: it is entered once per array read."""

    def __init__(self, source: str) -> None:
        self._source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, CheckpointError):
            return False
        failure = as_storage_error(self._source, exc)
        if failure is not None:
            raise failure from exc
        if isinstance(exc, (struct.error, zlib.error, EOFError, ValueError)):
            raise ArchiveError(f"{self._source}: malformed archive: {exc}") from exc
        return False


def _header(stream: NpyStream, where: str, *, pickled: bool) -> tuple[npy.NpyHeader, bytes]:
    """Parse the NPY header at the start of ``stream`` (an object dtype only if
    ``pickled``); return it and the bytes read past it."""
    total = stream.remaining
    head = stream.read(min(12, total))
    length = _header_length(head, total, where)
    head += stream.read(max(0, length - len(head)))
    header = npy.parse_header(head[:length], data_size=total - length, where=where, pickled=pickled)
    return header, head[length:]


def _header_length(head: bytes, total: int, where: str) -> int:
    """The NPY header length announced by ``head`` (its first 12 bytes), checked
    to fit a member of ``total`` bytes."""
    try:
        length = npy.header_length(head)
    except ValueError as exc:
        raise BadNpyHeaderError(f"{where}: bad NPY header: {exc}") from None
    if length > min(total, npy.MAX_HEADER_SIZE):
        raise BadNpyHeaderError(
            f"{where}: NPY header of {length} bytes does not fit a member of {total} bytes"
        )
    return length


def _bytes_of(array: np.ndarray, fortran: bool) -> memoryview:
    if array.nbytes == 0:
        return memoryview(bytearray())
    flat = array.T if fortran else array
    return memoryview(flat.reshape(-1).view(np.uint8))


def read_npy(
    source: ArchiveSource,
    name: str,
    *,
    stream: NpyStream | None = None,
    unpickle: Unpickle | None = None,
    allocate: Allocate = np.empty,
) -> np.ndarray:
    """Read NPY member ``name`` (from ``stream`` when given: an adapter over
    the member, see :mod:`._theano`), a large one into memory from ``allocate``.

    A member holding an object array (its data a pickle, as ``numpy.save``
    writes it with ``allow_pickle``) is a bad header, unless ``unpickle`` is
    given: then its data is read, CRC-checked and handed to ``unpickle``,
    which may refuse it.

    Errors are classified here already (StorageError, ArchiveError): this
    runs inside the unpickler (``persistent_load``), which would take any
    other exception for a malformed pickle.
    """
    with source.errors():
        where = f"{source.source}: member {name!r}"
        reader = source.reader
        if stream is None and source.mapping is None:
            data = reader.read_small(name)
            if data is not None:  # the usual small array: one request, no stream
                return _small_npy(reader, name, data, where, unpickle)
        member = stream is None
        stream = reader.open(name) if stream is None else stream
        header, rest = _header(stream, where, pickled=unpickle is not None)
        if header.pickled:
            assert unpickle is not None  # _header refuses object dtypes without it
            data = rest + stream.read(stream.remaining)
            stream.finish()
            return _unpickled(data, header, where, unpickle)
        order = "F" if header.fortran_order else "C"
        mapped = member and source.mapping is not None and reader.member(name).method == 0
        if mapped and header.nbytes:  # nothing to map (numpy cannot map zero-size items)
            offset = reader.data_offset(reader.member(name)) + header.size
            flat = np.frombuffer(
                source.mapping, dtype=header.dtype, count=math.prod(header.shape), offset=offset
            )
            return flat.reshape(header.shape, order=order)
        array = allocate(header.shape, header.dtype, order)
        view = _bytes_of(array, header.fortran_order)
        view[: len(rest)] = rest
        stream.readinto(view[len(rest) :])
        stream.finish()
        return array


def prefetch_npys(source: ArchiveSource, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays of the large stored NPY members among ``names`` of a source
    on an object store, all fetched together with concurrent range requests
    straight into their memory; empty elsewhere. Small, compressed and
    object-array members are left to :func:`read_npy`.

    Each member is fetched whole (local header, NPY header, data) into one
    buffer placed so that data 64-byte aligned in the file is 64-byte aligned
    in memory; its array is a view of it.
    """
    reader = source.reader
    if reader.ranges is None:
        return {}
    jobs: list[tuple[str, memoryview]] = []
    with source.errors():
        for name in names:
            span = reader.span(name)
            if span is None or span <= SMALL_MEMBER:
                continue
            buffer = np.empty(span + npy.ALIGN, np.uint8)
            shift = (reader.member(name).header_offset - buffer.ctypes.data) % npy.ALIGN
            jobs.append((name, memoryview(buffer[shift : shift + span])))
        if not jobs:
            return {}
        arrays = {}
        for (name, _), data in zip(jobs, reader.fetch_stored(jobs)):
            where = f"{source.source}: member {name!r}"
            length = _header_length(bytes(data[:12]), len(data), where)
            header = npy.parse_header(
                bytes(data[:length]), data_size=len(data) - length, where=where, pickled=True
            )
            if not header.pickled:
                flat = np.frombuffer(data[length:], dtype=header.dtype, count=math.prod(header.shape))
                arrays[name] = flat.reshape(header.shape, order="F" if header.fortran_order else "C")
        return arrays


def read_small_npys(source: ArchiveSource, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays of the small stored NPY members among ``names``, read
    together (:meth:`ZipReader.read_many`: one read for many members, into
    memory their arrays share, aligned as in the file) and checked as
    :func:`read_npy` checks them; empty for a mapped source (its arrays are
    mapped). A member that fails a check, or holds an object array, is left
    out: :func:`read_npy` reads it and reports what is wrong."""
    if source.mapping is not None:
        return {}
    arrays: dict[str, np.ndarray] = {}
    headers: dict[bytes, tuple[npy.NpyHeader, int, int] | None] = {}  # a model's arrays have a few dozen
    with source.errors():
        for run in source.reader.read_many(names, _aligned):
            arrays.update(_npys_of(run, headers))
    return arrays


def _npys_of(run: Run, headers: dict[bytes, tuple[npy.NpyHeader, int, int] | None]) -> Iterator[tuple[str, np.ndarray]]:
    """The arrays in ``run``'s members (whole NPYs), sharing its memory, but
    for members whose NPY header is bad; ``headers`` remembers each header
    met: its item count and the size of an NPY holding it (None: bad)."""
    data = run.data
    starts = np.array(run.starts, np.int64)
    whole = np.array(run.sizes, np.int64) >= 12  # any NPY is longer
    prefixes = np.frombuffer(data, np.uint8)[starts[whole, None] + np.arange(12)]
    lengths = np.full(len(starts), -1, np.int64)
    lengths[whole] = npy.header_lengths(prefixes)
    for name, start, size, length in zip(run.names, run.starts, run.sizes, lengths.tolist()):
        if length < 0 or length > size:
            continue
        head = bytes(data[start : start + length])
        known = headers.get(head, False)
        if known is False:
            known = headers[head] = _known_header(head, size - length)
        if known is None or known[2] != size:
            continue
        header, count, _ = known
        order = "F" if header.fortran_order else "C"
        if count == 0 or header.dtype.itemsize == 0:
            yield name, np.empty(header.shape, dtype=header.dtype, order=order)
        else:
            yield name, np.ndarray(header.shape, header.dtype, data, start + length, order=order)


def _known_header(head: bytes, data_size: int) -> tuple[npy.NpyHeader, int, int] | None:
    """A parsed NPY header, its item count and the size of an NPY holding it (None: bad)."""
    try:
        header = npy.parse_header(head, data_size=data_size, where="")
    except BadNpyHeaderError:
        return None
    return header, math.prod(header.shape), len(head) + header.nbytes


def _aligned(offset: int, size: int) -> memoryview:
    """Memory for ``size`` bytes of the file at ``offset``: what is 64-byte
    aligned in the file (our arrays' data) is 64-byte aligned in memory."""
    buffer = np.empty(size + npy.ALIGN, np.uint8)
    shift = (offset - buffer.ctypes.data) % npy.ALIGN
    return memoryview(buffer[shift : shift + size])


def _small_npy(
    reader: ZipReader, name: str, data: bytes, where: str, unpickle: Unpickle | None
) -> np.ndarray:
    """The array in ``data``, the whole of a stored member not CRC-checked yet:
    the header is judged first, as when streaming, then the CRC, then the copy."""
    length = _header_length(data[:12], len(data), where)
    header = npy.parse_header(
        data[:length], data_size=len(data) - length, where=where, pickled=unpickle is not None
    )
    reader.check_crc(name, data)
    if header.pickled:
        assert unpickle is not None  # parse_header refuses object dtypes without it
        return _unpickled(data[length:], header, where, unpickle)
    array = np.empty(header.shape, dtype=header.dtype, order="F" if header.fortran_order else "C")
    _bytes_of(array, header.fortran_order)[:] = memoryview(data)[length:]
    return array


def _unpickled(data: bytes, header: npy.NpyHeader, where: str, unpickle: Unpickle) -> np.ndarray:
    """The object array pickled in ``data`` (after ``header``, CRC already
    checked); what ``unpickle`` returns must be what the header declares."""
    array = unpickle(data, where)
    if not (isinstance(array, np.ndarray) and array.dtype == header.dtype and array.shape == header.shape):
        found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise BadNpyHeaderError(f"{where}: NPY header declares {header.dtype} {header.shape}, "
                                f"its pickled data holds {found}")
    return array


def check_member(source: ArchiveSource, name: str, stream: NpyStream | None = None, *, array: bool) -> None:
    """Read member ``name`` (or ``stream`` over it) through, checking its CRC-32
    and, for an ``array`` member, its NPY header against its size (an object
    array's pickled data is checked, never unpickled)."""
    where = f"{source.source}: member {name!r}"
    stream = source.reader.open(name) if stream is None else stream
    if array:
        _header(stream, where, pickled=True)
    while stream.remaining:
        stream.read(min(READ_BLOCK, stream.remaining))
    stream.finish()
