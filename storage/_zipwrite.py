"""A streaming ZIP writer: sequential writes only, never a seek back.

Every member carries a data descriptor (general purpose bit 3), so its CRC-32
and sizes follow its data and the destination may be a pipe or an upload.
Members are STORED (the default) or DEFLATEd; a stored member's data can be
aligned to 64 bytes in the file by padding the local header's extra field
(an ``0xD935`` alignment record, as Android's zipalign writes), so an archive
on local disk can be memory-mapped. ZIP64 records are written for members,
offsets and counts beyond the 32-bit (16-bit for counts) limits.

The CRC-32 of a large buffer is computed on a helper thread while the caller's
thread writes the same buffer (see :mod:`luigi_checkpoint.storage._crc`).
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import IO, Any, NamedTuple

import numpy as np

from ._crc import THREADED, crc32, running_crc
from ._ziprecords import (
    ALIGN_HEADER,
    CENTRAL_ENTRY,
    COUNT_LIMIT,
    DEFLATED,
    DESCRIPTOR,
    END,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    LOCAL_HEADER,
    STORED,
    ZIP64_DESCRIPTOR,
    ZIP64_END,
    ZIP64_LIMIT,
    ZIP64_LOCATOR,
    EndRecord,
    Zip64EndRecord,
    Zip64Locator,
    align_extra,
    zip64_extra,
)

__all__ = ["GATHER", "MANY", "ZipWriter", "WrittenMember"]

WRITE_BLOCK = 16 << 20  # bytes handed to the file per write call
GATHER = 1 << 20  # records and small members are gathered up to this size per write call
SMALL = THREADED  # members below this size are gathered, no CRC thread
MANY = 64 << 10  # below this size add_many writes members faster than add (above, the copy costs more)
METHODS = {"stored": STORED, "deflate": DEFLATED}
_ZIP64_LOCAL_EXTRA = zip64_extra([0, 0])  # the sizes are in the data descriptor
_VERSION = 20  # version needed to extract a member without ZIP64 records
_ATTRIBUTES = 0o100644 << 16  # a regular file, rw-r--r-- (Unix external attributes)

class WrittenMember(NamedTuple):
    """Where a member landed and what the central directory says of it."""

    name: str
    method: int
    header_offset: int
    data_offset: int
    crc: int
    compressed_size: int
    size: int
    zip64: bool


def _check_size(name: str, size: int, written: int) -> None:
    if written != size:
        raise ValueError(f"member {name!r}: announced {size} bytes, got {written}")


def _flags(encoded: bytes) -> int:
    return FLAG_DESCRIPTOR | (0 if encoded.isascii() else FLAG_UTF8)


def _flat(buffer: Any) -> memoryview | bytes:
    """A contiguous buffer as bytes (``bytearray +=`` takes a numpy array for a number)."""
    view = memoryview(buffer)
    return view.cast("B") if view.nbytes else b""


def _dos_time(stamp: float) -> tuple[int, int]:
    t = time.gmtime(stamp)
    return (
        (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
        ((max(t.tm_year, 1980) - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday,
    )


class ZipWriter:
    """Write a ZIP archive member by member to a binary file, sequentially.

    ``compression`` is ``"stored"`` or ``"deflate"`` for every member;
    ``force_zip64`` writes ZIP64 records even where not needed (readers
    must cope with both). Call :meth:`close` once, after the last member;
    it writes the central directory but does not close ``file``.
    """

    def __init__(
        self, file: IO[bytes], *, compression: str = "stored", force_zip64: bool = False
    ) -> None:
        if compression not in METHODS:
            raise ValueError(f"compression must be one of {sorted(METHODS)}, not {compression!r}")
        self._file = file
        self._method = METHODS[compression]
        self._force_zip64 = force_zip64
        self._position = 0
        self._gathered = bytearray()
        self._count = 0
        self._names: set[str] = set()
        self._directory: list[Any] = []  # the central entries of the members (bytes-like), in order
        self._headers: dict[tuple[int, bool, int, int, int], tuple[bytes, bytes]] = {}
        self._prefix_crcs: dict[bytes, int] = {}
        self._extras: dict[int, dict[int, bytes]] = {}  # alignment -> padding -> extra field
        self._time, self._date = _dos_time(time.time())

    def add(
        self, name: str, chunks: Iterable[memoryview | bytes], *, size: int, align: int = 1
    ) -> WrittenMember:
        """Write one member whose data is the concatenation of ``chunks``.

        ``size`` is the total length of the data (it must be exact: it decides
        ZIP64 up front). With ``align`` > 1 a stored member's data starts at a
        multiple of ``align`` in the file.
        """
        if name in self._names:
            raise ValueError(f"duplicate ZIP member name {name!r}")
        encoded = name.encode("utf8")
        flags = _flags(encoded)
        zip64 = self._force_zip64 or size * 1.01 + 1024 >= ZIP64_LIMIT
        header_offset = self._position
        header = self._local_header(encoded, flags, zip64, header_offset, align)
        data_offset = header_offset + len(header)
        descriptor = ZIP64_DESCRIPTOR if zip64 else DESCRIPTOR
        if self._method == STORED and size < SMALL:  # gathered, no CRC thread
            crc = written = 0
            gathered = self._gathered
            gathered += header
            for chunk in chunks:
                crc = crc32(chunk, crc)
                written += len(chunk)
                gathered += chunk
            _check_size(name, size, written)
            compressed = written
            gathered += descriptor.pack_values(crc, compressed, size)
            self._position = data_offset + written + descriptor.size
            if len(gathered) >= GATHER:
                self._flush()
        else:
            self._write(header)
            if self._method == STORED:
                crc, written = self._write_stored(chunks)
                compressed = written
            else:
                crc, written, compressed = self._write_deflated(chunks)
            _check_size(name, size, written)
            self._write(descriptor.pack_values(crc, compressed, size))
        member = WrittenMember(name, self._method, header_offset, data_offset, crc, compressed, size, zip64)
        self._count += 1
        self._names.add(name)
        self._directory.append(self._central_entry(member, encoded, flags))
        return member

    def add_many(
        self,
        names: Sequence[str],
        prefixes: Sequence[bytes],
        buffers: Sequence[Any],
        *,
        sizes: Sequence[int] | None = None,
        align: int = 1,
    ) -> list[int]:
        """Write one member per name whose data is its prefix then its buffer
        (a contiguous bytes-like object); return where each member's data starts.
        ``sizes``, if given, are the members' lengths (prefix and buffer).

        The same bytes as :meth:`add` for each in turn, for many small members
        at a fraction of the cost: their records are built as numpy rows and
        the members written with one call. Members that are not small, not
        stored or need ZIP64 records go through :meth:`add`.
        """
        if sizes is None:
            sizes = [len(prefix) + memoryview(buffer).nbytes for prefix, buffer in zip(prefixes, buffers)]
        batch = sum(sizes) + len(names) * (LOCAL_HEADER.size + DESCRIPTOR.size + 2 * align + 0xFFFF)
        if (
            self._method != STORED or self._force_zip64 or max(sizes, default=0) >= SMALL
            or self._position + batch >= ZIP64_LIMIT
        ):
            members = zip(names, prefixes, buffers, sizes)
            return [
                self.add(name, [prefix, _flat(buffer)], size=size, align=align).data_offset
                for name, prefix, buffer, size in members
            ]
        if not names:
            return []
        encoded = [name.encode("utf8") for name in names]
        self._claim(names)
        count = len(names)
        name_lengths = np.fromiter(map(len, encoded), np.int64, count)
        size = np.array(sizes, np.int64)
        pad = self._pads(name_lengths, size, align)
        lead = LOCAL_HEADER.size + name_lengths + pad  # local header, name, extra
        total = lead + size + DESCRIPTOR.size
        header_offset = self._position + np.cumsum(total) - total
        data_offset = header_offset + lead
        starts = self._prefix_crcs  # a model's arrays have a few dozen NPY headers
        for prefix in set(prefixes).difference(starts):
            starts[prefix] = crc32(prefix)
        crc = np.fromiter(map(crc32, buffers, map(starts.__getitem__, prefixes)), np.uint32, count)
        ascii_names = np.fromiter(map(bytes.isascii, encoded), bool, count)
        flags = np.where(ascii_names, FLAG_DESCRIPTOR, FLAG_DESCRIPTOR | FLAG_UTF8).astype(np.uint16)

        local = np.zeros(count, LOCAL_HEADER.row)
        local["signature"], local["version_needed"], local["flags"] = LOCAL_HEADER.signature, _VERSION, flags
        local["time"], local["date"] = self._time, self._date
        local["name_length"], local["extra_length"] = name_lengths, pad
        descriptor = np.empty(count, DESCRIPTOR.row)
        descriptor["signature"], descriptor["crc"] = DESCRIPTOR.signature, crc
        descriptor["compressed_size"] = descriptor["size"] = size
        pads, known = pad.tolist(), self._extras.setdefault(align, {0: b""})
        for length in set(pads).difference(known):
            known[length] = align_extra(length, align)
        extras = list(map(known.__getitem__, pads))
        members = zip(_records(local), encoded, extras, prefixes, buffers, _records(descriptor))
        stream = b"".join(itertools.chain.from_iterable(members))
        self._flush()
        self._write_through(memoryview(stream))
        self._position += len(stream)

        central = np.zeros(count, CENTRAL_ENTRY.row)
        central["signature"], central["version_made"] = CENTRAL_ENTRY.signature, (3 << 8) | _VERSION
        central["version_needed"], central["flags"] = _VERSION, flags
        central["time"], central["date"], central["crc"] = self._time, self._date, crc
        central["compressed_size"] = central["size"] = size
        central["name_length"], central["external_attributes"], central["header_offset"] = name_lengths, _ATTRIBUTES, header_offset
        self._directory.append(b"".join(itertools.chain.from_iterable(zip(_records(central), encoded))))
        self._count += count
        return data_offset.tolist()

    def _claim(self, names: Sequence[str]) -> None:
        """Record ``names`` as written, refusing a duplicate before anything is."""
        fresh = set(names)
        if len(fresh) != len(names) or not fresh.isdisjoint(self._names):
            seen = set(self._names)
            duplicate = next(name for name in names if name in seen or seen.add(name))  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate ZIP member name {duplicate!r}")
        self._names |= fresh

    def _pads(self, name_lengths: np.ndarray, size: np.ndarray, align: int) -> np.ndarray:
        """The alignment padding of each member's local header (as :meth:`add`
        chooses it): a member's data starts aligned, so the next header starts
        at the previous member's data size plus its descriptor, modulo ``align``."""
        if align <= 1:
            return np.zeros(len(size), np.int64)
        start = np.empty(len(size), np.int64)
        start[0] = self._position
        start[1:] = size[:-1] + DESCRIPTOR.size
        pad = -(start + LOCAL_HEADER.size + name_lengths) % align
        while (short := (pad > 0) & (pad < ALIGN_HEADER.size)).any():
            pad[short] += align
        return pad


    def close(self) -> None:
        """Write the central directory and the end records."""
        directory_offset = self._position
        self._write(b"".join(self._directory))
        directory_size = self._position - directory_offset
        count = self._count
        if (
            self._force_zip64
            or count >= COUNT_LIMIT
            or directory_offset >= ZIP64_LIMIT
            or directory_size >= ZIP64_LIMIT
        ):
            record_offset = self._position
            record = Zip64EndRecord(
                record_size=ZIP64_END.size - 12, version_made=45, version_needed=45,
                disk=0, directory_disk=0, disk_entries=count, entries=count,
                directory_size=directory_size, directory_offset=directory_offset,
            )
            self._write(ZIP64_END.pack(record))
            locator = Zip64Locator(end_disk=0, end_offset=record_offset, disks=1)
            self._write(ZIP64_LOCATOR.pack(locator))
            count = min(count, COUNT_LIMIT)
            directory_size = min(directory_size, ZIP64_LIMIT)
            directory_offset = min(directory_offset, ZIP64_LIMIT)
        end = EndRecord(
            disk=0, directory_disk=0, disk_entries=count, entries=count,
            directory_size=directory_size, directory_offset=directory_offset, comment_length=0,
        )
        self._write(END.pack(end))
        self._flush()

    def _local_header(self, encoded: bytes, flags: int, zip64: bool, offset: int, align: int) -> bytes:
        extra = _ZIP64_LOCAL_EXTRA if zip64 else b""
        pad = 0
        if align > 1 and self._method == STORED:
            pad = -(offset + LOCAL_HEADER.size + len(encoded) + len(extra)) % align
            while 0 < pad < ALIGN_HEADER.size:
                pad += align
        key = (flags, zip64, len(encoded), pad, align)
        if key not in self._headers:  # a model's members have a few name lengths and pads
            if pad:
                extra += align_extra(pad, align)
            size_field = ZIP64_LIMIT if zip64 else 0
            record = LOCAL_HEADER.pack_values(
                45 if zip64 else _VERSION, flags, self._method, self._time, self._date, 0, size_field, size_field,
                len(encoded), len(extra),
            )
            self._headers[key] = (record, extra)
        record, extra = self._headers[key]
        return record + encoded + extra

    def _central_entry(self, member: WrittenMember, encoded: bytes, flags: int) -> bytes:
        fields = (member.size, member.compressed_size, member.header_offset)
        extra, version = b"", _VERSION
        size, compressed, offset = fields
        if self._force_zip64 or max(fields) >= ZIP64_LIMIT:
            large = [self._force_zip64 or value >= ZIP64_LIMIT for value in fields]
            extra = zip64_extra([value for value, big in zip(fields, large) if big])
            size, compressed, offset = (ZIP64_LIMIT if big else value for value, big in zip(fields, large))
            version = 45
        entry = CENTRAL_ENTRY.pack_values(
            (3 << 8) | version, version, flags, member.method, self._time, self._date, member.crc,
            compressed, size, len(encoded), len(extra), 0, 0, 0, _ATTRIBUTES, offset,
        )
        return entry + encoded + extra

    def _write(self, data: memoryview | bytes) -> None:
        # A tiny member costs three records and its data: one write call per
        # GATHER bytes instead of four per member (each is a syscall, or a
        # call into an upload's buffer).
        view = data if type(data) is bytes else memoryview(data).cast("B")
        self._position += len(view)
        if len(view) < GATHER:
            self._gathered += view
            if len(self._gathered) >= GATHER:
                self._flush()
            return
        self._flush()
        self._write_through(memoryview(view))

    def _flush(self) -> None:
        if self._gathered:
            self._write_through(memoryview(self._gathered))
            self._gathered = bytearray()

    def _write_through(self, view: memoryview) -> None:
        start = 0
        while start < len(view):
            block = view[start : start + WRITE_BLOCK]
            count = self._file.write(block)
            start += len(block) if count is None else count  # raw files may write less

    def _write_stored(self, chunks: Iterable[memoryview | bytes]) -> tuple[int, int]:
        written = 0
        with running_crc() as crc:
            for chunk in chunks:
                crc.update(chunk)
                self._write(chunk)
                written += len(chunk)
            return crc.value, written

    def _write_deflated(self, chunks: Iterable[memoryview | bytes]) -> tuple[int, int, int]:
        deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        crc = 0
        written = 0
        compressed = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), WRITE_BLOCK):
                piece = view[start : start + WRITE_BLOCK]
                crc = crc32(piece, crc)
                out = deflater.compress(piece)
                self._write(out)
                compressed += len(out)
            written += len(view)
        out = deflater.flush()
        self._write(out)
        return crc, written, compressed + len(out)


def _records(rows: np.ndarray) -> list[bytes]:
    """The bytes of each row of a structured array."""
    data, width = rows.tobytes(), rows.dtype.itemsize
    return [data[start : start + width] for start in range(0, len(data), width)]
