"""A validating ZIP reader over any seekable binary file (local or fsspec).

It reads the end of central directory first (one read of the file's tail),
then the central directory, and touches members only when asked, so a
remote archive costs a few range reads. Nothing in the directory is trusted:
offsets and sizes must lie inside the file and not overlap, the member count
must fit the directory, a stored member's sizes must agree and a DEFLATE
member cannot claim more than the format can expand (zip bombs). Member data
is read with a bounded decompressor and its CRC-32 checked. Every problem is
an :class:`ArchiveError` subclass naming the archive.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace
from typing import IO

from ._crc import running_crc
from ._ziprecords import (
    CENTRAL_ENTRY,
    COUNT_LIMIT,
    DEFLATED,
    END,
    EXTRA_HEADER,
    FLAG_ENCRYPTED,
    FLAG_UTF8,
    LOCAL_HEADER,
    STORED,
    ZIP64_END,
    ZIP64_EXTRA,
    ZIP64_LIMIT,
    ZIP64_LOCATOR,
    EndRecord,
    zip64_extra_values,
)
from .errors import (
    ArchiveError,
    ArchiveTooLargeError,
    ChecksumError,
    MissingMemberError,
    NotAnArchiveError,
    TruncatedArchiveError,
)

__all__ = ["Member", "MemberStream", "ZipReader"]

TAIL_SIZE = END.size + 0xFFFF + ZIP64_LOCATOR.size + ZIP64_END.size  # 0xFFFF: longest comment
MAX_DEFLATE_RATIO = 1032  # DEFLATE's largest possible expansion
READ_BLOCK = 4 << 20  # compressed bytes read at a time
OUTPUT_BLOCK = 16 << 20  # uncompressed bytes produced between CRC updates


@dataclass(frozen=True)
class Member:
    """One central directory entry, validated against the file's layout."""

    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    limit: int  # where the next member (or the central directory) starts


class ZipReader:
    """Parse and validate the directory of the ZIP in ``file``.

    ``source`` names the archive in error messages (a URL, path or repr).
    Stored data is read in reads of ``block_size`` bytes (remote files want
    few large range requests; the CRC of one block overlaps the next read).
    """

    def __init__(self, file: IO[bytes], *, source: str, block_size: int = OUTPUT_BLOCK) -> None:
        self.file = file
        self.source = source
        self.block_size = block_size
        self._data_offsets: dict[str, int] = {}
        try:
            self.members = self._read_directory()
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise NotAnArchiveError(f"{source}: corrupt ZIP directory: {exc}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def member(self, name: str) -> Member:
        """The member called ``name``, or :class:`MissingMemberError`."""
        try:
            return self.members[name]
        except KeyError:
            raise MissingMemberError(f"{self.source}: no member {name!r} in the archive") from None

    def _fail(self, cls: type[ArchiveError], problem: str) -> ArchiveError:
        return cls(f"{self.source}: {problem}")

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` or :class:`TruncatedArchiveError`."""
        self.file.seek(offset)
        data = self.file.read(size)
        if len(data) != size:
            raise self._fail(TruncatedArchiveError, f"ends at {offset + len(data)}, "
                             f"{size} bytes were expected at offset {offset}")
        return data

    def _read_directory(self) -> dict[str, Member]:
        file_size = self.file.seek(0, 2)
        tail_start = max(0, file_size - TAIL_SIZE)
        tail = self.read_at(tail_start, file_size - tail_start)
        end_offset, end = self._find_end_record(tail, tail_start)
        count, directory_size, directory_offset = (
            end.entries, end.directory_size, end.directory_offset
        )
        if count == COUNT_LIMIT or directory_size == ZIP64_LIMIT or directory_offset == ZIP64_LIMIT:
            end_offset, count, directory_size, directory_offset = self._zip64_end(end_offset)
        if directory_offset + directory_size > end_offset:
            raise self._fail(TruncatedArchiveError, "central directory lies beyond the end records")
        if count * CENTRAL_ENTRY.size > directory_size:
            raise self._fail(NotAnArchiveError, f"{count} members cannot fit a central "
                             f"directory of {directory_size} bytes")
        if directory_offset >= tail_start:
            start = directory_offset - tail_start
            directory = tail[start : start + directory_size]
        else:
            directory = self.read_at(directory_offset, directory_size)
        members, minimum_sizes = self._parse_directory(directory, count, directory_offset)
        return self._check_layout(members, minimum_sizes, directory_offset)

    def _find_end_record(self, tail: bytes, tail_start: int) -> tuple[int, EndRecord]:
        position = len(tail) - END.size
        while position >= 0:
            position = tail.rfind(END.signature, 0, position + 4)
            if position < 0:
                break
            end = END.unpack_from(tail, position)
            if end is not None and position + END.size + end.comment_length == len(tail):
                if end.disk or end.directory_disk or end.disk_entries != end.entries:
                    raise self._fail(ArchiveError, "multi-disk ZIP archives are not supported")
                return tail_start + position, end
            position -= 1
        head = self.read_at(0, min(4, tail_start + len(tail)))
        if head and LOCAL_HEADER.signature.startswith(head):
            raise self._fail(TruncatedArchiveError, "truncated: no end of central directory "
                             "record (the file ends early)")
        raise self._fail(NotAnArchiveError, "not a ZIP archive (no end of central directory)")

    def _zip64_end(self, end_offset: int) -> tuple[int, int, int, int]:
        locator_offset = end_offset - ZIP64_LOCATOR.size
        if locator_offset < 0:
            raise self._fail(TruncatedArchiveError, "ZIP64 end of directory locator missing")
        locator = ZIP64_LOCATOR.unpack_from(self.read_at(locator_offset, ZIP64_LOCATOR.size))
        if locator is None:
            raise self._fail(NotAnArchiveError, "ZIP64 end of central directory locator missing")
        record_offset = locator.end_offset
        if record_offset + ZIP64_END.size > locator_offset:
            raise self._fail(TruncatedArchiveError, "ZIP64 end record lies beyond the file")
        record = ZIP64_END.unpack_from(self.read_at(record_offset, ZIP64_END.size))
        if record is None:
            raise self._fail(NotAnArchiveError, "bad ZIP64 end of central directory record")
        return record_offset, record.entries, record.directory_size, record.directory_offset

    def _parse_directory(
        self, directory: bytes, count: int, directory_offset: int
    ) -> tuple[list[Member], list[int]]:
        members = []
        minimum_sizes = []  # local header and data, at least
        position = 0
        for _ in range(count):
            entry = CENTRAL_ENTRY.unpack_from(directory, position)
            if entry is None:
                raise self._fail(NotAnArchiveError, f"bad central directory entry at {position}")
            method, name_len, extra_len = entry.method, entry.name_length, entry.extra_length
            start = position + CENTRAL_ENTRY.size
            raw_name = directory[start : start + name_len]
            extra = directory[start + name_len : start + name_len + extra_len]
            position = start + name_len + extra_len + entry.comment_length
            if position > len(directory):
                raise self._fail(NotAnArchiveError, "central directory entry overruns its end")
            name = raw_name.decode("utf8" if entry.flags & FLAG_UTF8 else "cp437")
            if entry.flags & FLAG_ENCRYPTED:
                raise self._fail(ArchiveError, f"member {name!r} is encrypted (unsupported)")
            if method not in (STORED, DEFLATED):
                raise self._fail(ArchiveError, f"member {name!r} uses unsupported compression "
                                 f"method {method}")
            size, compressed, offset = _zip64_values(
                extra, entry.size, entry.compressed_size, entry.header_offset
            )
            if method == STORED and size != compressed:
                raise self._fail(ArchiveTooLargeError, f"stored member {name!r} declares {size} "
                                 f"bytes but holds {compressed}")
            if method == DEFLATED and size > compressed * MAX_DEFLATE_RATIO + 1024:
                raise self._fail(ArchiveTooLargeError, f"member {name!r} declares {size} bytes, "
                                 f"impossible from {compressed} compressed bytes (zip bomb)")
            if offset + LOCAL_HEADER.size + name_len + compressed > directory_offset:
                raise self._fail(TruncatedArchiveError, f"member {name!r} extends past the "
                                 f"central directory")
            members.append(
                Member(name, method, entry.crc, compressed, size, offset, directory_offset)
            )
            minimum_sizes.append(LOCAL_HEADER.size + name_len + compressed)
        return members, minimum_sizes

    def _check_layout(
        self, members: list[Member], minimum_sizes: list[int], directory_offset: int
    ) -> dict[str, Member]:
        ordered = sorted(zip(members, minimum_sizes), key=lambda pair: pair[0].header_offset)
        result: dict[str, Member] = {}
        for index, (member, minimum) in enumerate(ordered):
            limit = (
                ordered[index + 1][0].header_offset
                if index + 1 < len(ordered)
                else directory_offset
            )
            if member.header_offset + minimum > limit:
                raise self._fail(NotAnArchiveError, f"member {member.name!r} overlaps the next one")
            if member.name in result:
                raise self._fail(NotAnArchiveError, f"duplicate member {member.name!r}")
            result[member.name] = replace(member, limit=limit)
        return {m.name: result[m.name] for m in members}

    def data_offset(self, member: Member) -> int:
        """Absolute offset of the member's (compressed) data, from its local header."""
        if member.name not in self._data_offsets:
            header = LOCAL_HEADER.unpack_from(self.read_at(member.header_offset, LOCAL_HEADER.size))
            if header is None:
                raise self._fail(NotAnArchiveError, f"member {member.name!r}: bad local header")
            name_start = member.header_offset + LOCAL_HEADER.size
            raw_name = self.read_at(name_start, header.name_length)
            if raw_name.decode("utf8" if header.flags & FLAG_UTF8 else "cp437") != member.name:
                raise self._fail(NotAnArchiveError, f"member {member.name!r}: local header "
                                 f"names {raw_name!r}")
            start = name_start + header.name_length + header.extra_length
            if start + member.compressed_size > member.limit:
                raise self._fail(NotAnArchiveError, f"member {member.name!r}: local header "
                                 f"disagrees with the central directory")
            self._data_offsets[member.name] = start
        return self._data_offsets[member.name]

    def open(self, name: str) -> MemberStream:
        """A reader of the uncompressed data of member ``name``."""
        member = self.member(name)
        return MemberStream(self, member, self.data_offset(member))

    def read(self, name: str) -> bytes:
        """The whole (uncompressed, CRC-checked) content of member ``name``."""
        stream = self.open(name)
        data = stream.read(stream.member.size)
        stream.finish()
        return data


def _zip64_values(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    values = [size, compressed, offset]
    position = 0
    while position + EXTRA_HEADER.size <= len(extra):
        tag, length = EXTRA_HEADER.unpack_from(extra, position)
        position += EXTRA_HEADER.size
        if tag == ZIP64_EXTRA:
            wanted = [i for i, v in enumerate(values) if v == ZIP64_LIMIT]
            numbers = zip64_extra_values(extra[position : position + length], len(wanted))
            for index, number in zip(wanted, numbers):
                values[index] = number
        position += length
    return values[0], values[1], values[2]


class MemberStream:
    """Sequential reads of one member's uncompressed data, CRC tracked.

    Reads never return more than the member declares; :meth:`finish` checks
    that the data ended exactly there and that the CRC-32 matches.
    """

    def __init__(self, reader: ZipReader, member: Member, data_offset: int) -> None:
        self.member = member
        self._reader = reader
        self._position = data_offset
        self._left_compressed = member.compressed_size
        self._left = member.size
        self._crc = 0
        self._pending = b""
        self._inflater = zlib.decompressobj(-15) if member.method == DEFLATED else None

    def _fail(self, cls: type[ArchiveError], problem: str) -> ArchiveError:
        return self._reader._fail(cls, f"member {self.member.name!r}: {problem}")

    @property
    def remaining(self) -> int:
        """Uncompressed bytes not read yet."""
        return self._left

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the member).

        Memory grows with the data actually read, never with what a
        (possibly hostile) directory declares.
        """
        parts = []
        for start in range(0, min(size, self._left), OUTPUT_BLOCK):
            part = bytearray(min(OUTPUT_BLOCK, size - start, self._left))
            self.readinto(memoryview(part))
            parts.append(part)
        return b"".join(parts)

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` completely from the member; :class:`TruncatedArchiveError`
        if the member has fewer bytes left."""
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if len(view) > self._left:
            raise self._fail(TruncatedArchiveError, f"{len(view)} bytes wanted, {self._left} left")
        step = self._reader.block_size if self._inflater is None else OUTPUT_BLOCK
        with running_crc(self._crc) as crc:
            for start in range(0, len(view), step):
                block = view[start : start + step]
                if self._inflater is None:
                    self._read_raw_into(block)
                else:
                    self._inflate_into(block)
                crc.update(block)  # overlaps the reading of the next block
            self._crc = crc.value
        self._left -= len(view)
        return len(view)

    def _read_raw_into(self, view: memoryview) -> None:
        file = self._reader.file
        file.seek(self._position)
        filled = 0
        while filled < len(view):
            got = file.readinto(view[filled:])
            if not got:
                raise self._fail(TruncatedArchiveError, "data ends early (truncated file)")
            filled += got
        self._position += filled
        self._left_compressed -= filled

    def _next_compressed(self) -> bytes:
        size = min(READ_BLOCK, self._left_compressed)
        data = self._reader.read_at(self._position, size)
        self._position += size
        self._left_compressed -= size
        return data

    def _inflate_into(self, view: memoryview) -> None:
        assert self._inflater is not None
        filled = 0
        try:
            while filled < len(view):
                if self._inflater.eof or not (self._pending or self._left_compressed):
                    raise self._fail(TruncatedArchiveError,
                                     "compressed data ends before the declared size")
                if not self._pending:
                    self._pending = self._next_compressed()
                out = self._inflate(len(view) - filled)
                view[filled : filled + len(out)] = out
                filled += len(out)
        except zlib.error as exc:
            raise self._fail(ChecksumError, f"corrupt DEFLATE data: {exc}") from None

    def _inflate(self, limit: int) -> bytes:
        """Up to ``limit`` bytes from the pending input; a corrupt stream on
        which zlib makes no progress (it then reports no error) is refused."""
        assert self._inflater is not None
        before = len(self._pending)
        out = self._inflater.decompress(self._pending, limit)
        self._pending = self._inflater.unconsumed_tail
        if not out and len(self._pending) == before and not self._inflater.eof:
            raise self._fail(ChecksumError, "corrupt DEFLATE data (inflate makes no progress)")
        return out

    def finish(self) -> None:
        """Check that all data was read, nothing more is there and the CRC matches."""
        if self._left:
            raise self._fail(TruncatedArchiveError, f"{self._left} bytes left unread")
        if self._inflater is not None:
            try:
                while not self._inflater.eof and (self._pending or self._left_compressed):
                    if not self._pending:
                        self._pending = self._next_compressed()
                    if self._inflate(1):
                        raise self._fail(ArchiveTooLargeError,
                                         "inflates beyond its declared size")
            except zlib.error as exc:
                raise self._fail(ChecksumError, f"corrupt DEFLATE data: {exc}") from None
            if not self._inflater.eof:
                raise self._fail(TruncatedArchiveError, "compressed data is cut short")
        if self._crc != self.member.crc:
            raise self._fail(ChecksumError, f"CRC-32 mismatch (stored {self.member.crc:08x}, "
                             f"computed {self._crc:08x})")
