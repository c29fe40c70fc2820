"""The ZIP binary records (PKWARE APPNOTE 4.3-4.5), shared by the reader and the writer.

Each fixed-size record is a :class:`Record`: its four-byte signature and the
little-endian layout of the fields that follow it, named by a NamedTuple, and
the same layout as a numpy structured dtype (:attr:`Record.row`) for code that
reads or writes many records at once.
The variable parts after a record (names, extra fields, comments) are the
callers' business, except the two extra fields this package writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

__all__ = [
    "ALIGN_HEADER", "CENTRAL_ENTRY", "COUNT_LIMIT", "DEFLATED", "DESCRIPTOR", "END",
    "EXTRA_HEADER", "FLAG_DESCRIPTOR", "FLAG_ENCRYPTED", "FLAG_UTF8", "LOCAL_HEADER",
    "STORED", "ZIP64_DESCRIPTOR", "ZIP64_END", "ZIP64_EXTRA", "ZIP64_LIMIT", "ZIP64_LOCATOR",
    "CentralEntry", "DataDescriptor", "EndRecord", "LocalHeader", "Record", "Zip64EndRecord",
    "Zip64Locator", "align_extra", "zip64_extra", "zip64_extra_values",
]

ZIP64_LIMIT = 0xFFFFFFFF  # a 32-bit field holding this defers to the ZIP64 records
COUNT_LIMIT = 0xFFFF  # the same for the 16-bit member counts
STORED = 0
DEFLATED = 8
FLAG_ENCRYPTED = 0x01
FLAG_DESCRIPTOR = 0x08  # CRC-32 and sizes follow the data, in a data descriptor
FLAG_UTF8 = 0x800  # the name is UTF-8, not CP437

Fields = TypeVar("Fields", bound=tuple[int, ...])
_NUMPY_TYPES = {"H": "<u2", "L": "<u4", "Q": "<u8"}


class Record(Generic[Fields]):
    """A record: ``signature``, then the fields of ``fields`` laid out as ``layout``."""

    def __init__(self, signature: bytes, layout: str, fields: type[Fields]) -> None:
        self.signature = signature
        self._struct = struct.Struct("<4s" + layout)
        self.size = self._struct.size
        self._fields: Callable[..., Fields] = fields
        # The record as a numpy row: ``signature``, then the fields by their names.
        names: tuple[str, ...] = getattr(fields, "_fields")
        self.row = np.dtype([("signature", "S4"), *zip(names, map(_NUMPY_TYPES.__getitem__, layout))])
        assert self.row.itemsize == self.size
        # values_from(buffer, offset=0): the signature found at ``offset``, then
        # the values of the fields (a reader's hot path: no named tuple, no
        # Python call in between).
        self.values_from: Callable[..., tuple[Any, ...]] = self._struct.unpack_from

    def pack(self, fields: Fields) -> bytes:
        """The record holding ``fields``."""
        return self._struct.pack(self.signature, *fields)

    def pack_values(self, *values: int) -> bytes:
        """The record holding ``values``, in the order of the fields (a writer's
        hot path: no named tuple per record)."""
        return self._struct.pack(self.signature, *values)

    def unpack_from(self, buffer: bytes, offset: int = 0) -> Fields | None:
        """The record at ``offset``, or None if its signature is not there."""
        signature, *values = self._struct.unpack_from(buffer, offset)
        return self._fields(*values) if signature == self.signature else None


class LocalHeader(NamedTuple):
    version_needed: int
    flags: int
    method: int
    time: int
    date: int
    crc: int
    compressed_size: int
    size: int
    name_length: int
    extra_length: int


class DataDescriptor(NamedTuple):
    crc: int
    compressed_size: int
    size: int


class CentralEntry(NamedTuple):
    version_made: int
    version_needed: int
    flags: int
    method: int
    time: int
    date: int
    crc: int
    compressed_size: int
    size: int
    name_length: int
    extra_length: int
    comment_length: int
    disk: int
    internal_attributes: int
    external_attributes: int
    header_offset: int


class Zip64EndRecord(NamedTuple):
    record_size: int  # of the rest of the record, after this field
    version_made: int
    version_needed: int
    disk: int
    directory_disk: int
    disk_entries: int
    entries: int
    directory_size: int
    directory_offset: int


class Zip64Locator(NamedTuple):
    end_disk: int
    end_offset: int
    disks: int


class EndRecord(NamedTuple):
    disk: int
    directory_disk: int
    disk_entries: int
    entries: int
    directory_size: int
    directory_offset: int
    comment_length: int


LOCAL_HEADER = Record(b"PK\x03\x04", "HHHHHLLLHH", LocalHeader)
DESCRIPTOR = Record(b"PK\x07\x08", "LLL", DataDescriptor)
ZIP64_DESCRIPTOR = Record(b"PK\x07\x08", "LQQ", DataDescriptor)
CENTRAL_ENTRY = Record(b"PK\x01\x02", "HHHHHHLLLHHHHHLL", CentralEntry)
ZIP64_END = Record(b"PK\x06\x06", "QHHLLQQQQ", Zip64EndRecord)
ZIP64_LOCATOR = Record(b"PK\x06\x07", "LQL", Zip64Locator)
END = Record(b"PK\x05\x06", "HHHHLLH", EndRecord)

EXTRA_HEADER = struct.Struct("<HH")  # any extra field: its tag, the size of its data
ZIP64_EXTRA = 0x0001  # 64-bit values for the 32-bit fields that hold ZIP64_LIMIT
ALIGN_EXTRA = 0xD935  # Android zipalign's padding: a 16-bit alignment, then zeros
ALIGN_HEADER = struct.Struct("<HHH")  # tag, size of the data, alignment


def zip64_extra(values: Sequence[int]) -> bytes:
    """The ZIP64 extra field holding ``values``."""
    data = struct.pack(f"<{len(values)}Q", *values)
    return EXTRA_HEADER.pack(ZIP64_EXTRA, len(data)) + data


def zip64_extra_values(data: bytes, count: int) -> tuple[int, ...]:
    """The first ``count`` values in the data of a ZIP64 extra field."""
    return struct.unpack_from(f"<{count}Q", data)


def align_extra(size: int, alignment: int) -> bytes:
    """An alignment extra field of ``size`` bytes (at least ``ALIGN_HEADER.size``)."""
    padding = bytes(size - ALIGN_HEADER.size)
    return ALIGN_HEADER.pack(ALIGN_EXTRA, size - EXTRA_HEADER.size, alignment) + padding
