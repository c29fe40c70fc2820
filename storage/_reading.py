"""Opening archives for reading and reading their NPY members.

:func:`open_source` turns a path, URL or open binary file into a validated
:class:`~luigi_checkpoint.storage._zipread.ZipReader` and converts any low-level parsing error
into an :class:`ArchiveError` naming the archive, and any transport failure
(a reset connection, a response cut short, an S3 error) into a
:class:`StorageError` naming it: a read that failed says nothing about the
archive's bytes. :func:`read_npy` reads one NPY member into a fresh array
with a single ``readinto`` (or maps it, for stored members of a local archive
opened with ``mmap=True``), validating the header against the member's size
before allocating. :func:`parse_manifest_json` parses a ``manifest.json``
member.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from . import _npy as npy, _trust as trust
from .errors import ArchiveError, BadNpyHeaderError, BadPersistentIdError, CheckpointError
from .fs import resolve, storage_errors, url_of
from ._zipread import READ_BLOCK, MemberStream, ZipReader

__all__ = ["ArchiveSource", "check_member", "open_source", "parse_manifest_json", "read_npy"]

REMOTE_BLOCK = 256 << 10  # read-ahead of remote files beyond each request
REMOTE_READ = 64 << 20  # one range request of array data (and its temporary copy)
CONTEXT_PREFIX_MAX = 4096  # a gpuarray member's pickled context name is tiny


@dataclass(frozen=True)
class ArchiveSource:
    """An open archive: its directory, its name for messages, and (for
    ``mmap=True`` on local disk) a read-only map of the whole file."""

    reader: ZipReader
    source: str
    mapping: mmap.mmap | None = None


@contextmanager
def open_source(
    src: str | os.PathLike[str] | IO[bytes],
    storage_options: dict[str, Any] | None,
    *,
    mmap: bool = False,
) -> Iterator[ArchiveSource]:
    """Open ``src`` (closing it afterwards unless it was an open file).

    Raises :class:`StorageError` when reading fails, FileNotFoundError when
    there is nothing at ``src``, and :class:`ArchiveError` when the bytes are
    malformed.
    """
    if not isinstance(src, (str, os.PathLike)):
        source = repr(src)
        with _reading_errors(source):
            yield ArchiveSource(ZipReader(src, source=source), source)
        return
    fs, path = resolve(src, storage_options)
    source = url_of(fs, path)
    local = isinstance(fs, LocalFileSystem)
    options = {} if local else {"block_size": REMOTE_BLOCK, "cache_type": "readahead"}
    with _reading_errors(source), fs.open(path, "rb", **options) as f:
        reader = ZipReader(f, source=source, **({} if local else {"block_size": REMOTE_READ}))
        yield ArchiveSource(reader, source, _map(f) if mmap and local else None)


def _map(file: IO[bytes]) -> mmap.mmap:
    # The same open file the directory was read from, so a concurrent
    # replacement of the path cannot swap the bytes under the reader.
    return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


@contextmanager
def _reading_errors(source: str) -> Iterator[None]:
    """Transport failures become StorageError first (some are ValueErrors
    too: SSL certificate and invalid URL errors), then parse errors ArchiveError."""
    with _as_archive_errors(source), storage_errors(source):
        yield


@contextmanager
def _as_archive_errors(source: str) -> Iterator[None]:
    try:
        yield
    except CheckpointError:
        raise
    except (struct.error, zlib.error, EOFError, ValueError) as exc:
        raise ArchiveError(f"{source}: malformed archive: {exc}") from exc


def parse_manifest_json(data: bytes, source: str) -> Any:
    """The ``manifest.json`` member ``data`` of archive ``source``, parsed.

    Raises :class:`ArchiveError` naming ``source`` if it is not UTF-8 JSON,
    nesting too deep for the parser included.
    """
    try:
        return json.loads(data.decode("utf8"))
    except (ValueError, RecursionError) as exc:
        raise ArchiveError(f"{source}: manifest.json is not JSON: {exc}") from None


def _header(stream: MemberStream, head: bytes, where: str) -> tuple[npy.NpyHeader, bytes]:
    """Parse the NPY header at the start of ``head`` + the rest of ``stream``;
    return it and the bytes read past it."""
    total = len(head) + stream.remaining
    head += stream.read(max(0, min(12, total) - len(head)))
    try:
        length = npy.header_length(head)
    except ValueError as exc:
        raise BadNpyHeaderError(f"{where}: bad NPY header: {exc}") from None
    if length > min(total, npy.MAX_HEADER_SIZE):
        raise BadNpyHeaderError(
            f"{where}: NPY header of {length} bytes does not fit a member of {total} bytes"
        )
    head += stream.read(max(0, length - len(head)))
    header = npy.parse_header(head[:length], data_size=total - length, where=where)
    return header, head[length:]


def _skip_context(stream: MemberStream, where: str) -> bytes:
    """Read past the pickled context name that starts a Theano ``gpuarray`` member."""
    prefix = io.BytesIO(stream.read(min(stream.remaining, CONTEXT_PREFIX_MAX)))
    try:
        context = trust.restricted_unpickler(prefix, source=where).load()
    except CheckpointError:
        raise
    except Exception as exc:  # any malformed stream
        raise BadPersistentIdError(f"{where}: bad gpuarray context name: {exc}") from None
    if not isinstance(context, (str, bytes, type(None))):
        raise BadPersistentIdError(f"{where}: gpuarray context name is {type(context).__name__}")
    return prefix.getvalue()[prefix.tell() :]


def _bytes_of(array: np.ndarray, fortran: bool) -> memoryview:
    if array.nbytes == 0:
        return memoryview(bytearray())
    flat = array.T if fortran else array
    return memoryview(flat.reshape(-1).view(np.uint8))


def read_npy(archive: ArchiveSource, name: str, *, context_prefix: bool = False) -> np.ndarray:
    """Read NPY member ``name`` (after a pickled context name if ``context_prefix``).

    Errors are classified here already (StorageError, ArchiveError): this
    runs inside the unpickler (``persistent_load``), which would take any
    other exception for a malformed pickle.
    """
    with _reading_errors(archive.source):
        where = f"{archive.source}: member {name!r}"
        stream = archive.reader.open(name)
        head = _skip_context(stream, where) if context_prefix else b""
        header, rest = _header(stream, head, where)
        order = "F" if header.fortran_order else "C"
        if archive.mapping is not None and stream.member.method == 0 and not context_prefix:
            offset = archive.reader.data_offset(stream.member) + header.size
            flat = np.frombuffer(
                archive.mapping, dtype=header.dtype, count=math.prod(header.shape), offset=offset
            )
            return flat.reshape(header.shape, order=order)
        array = np.empty(header.shape, dtype=header.dtype, order=order)
        view = _bytes_of(array, header.fortran_order)
        view[: len(rest)] = rest
        stream.readinto(view[len(rest) :])
        stream.finish()
        return array


def check_member(archive: ArchiveSource, name: str, *, array: bool, context_prefix: bool) -> None:
    """Read member ``name`` through, checking its CRC-32 and, for an ``array``
    member, its NPY header against its size."""
    where = f"{archive.source}: member {name!r}"
    stream = archive.reader.open(name)
    head = _skip_context(stream, where) if context_prefix else b""
    if array:
        _header(stream, head, where)
    while stream.remaining:
        stream.read(min(READ_BLOCK, stream.remaining))
    stream.finish()
