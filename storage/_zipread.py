"""A validating ZIP reader over any seekable binary file (local or fsspec).

It reads the end of central directory first (one read of the file's tail),
then the central directory, and touches members only when asked, so a
remote archive costs a few range reads. Nothing in the directory is trusted:
offsets and sizes must lie inside the file and not overlap, the member count
must fit the directory, a stored member's sizes must agree and a DEFLATE
member cannot claim more than the format can expand (zip bombs). Member data
is read with a bounded decompressor and its CRC-32 checked. Every problem is
an :class:`ArchiveError` subclass naming the archive.

What is read, as zipfile and Info-ZIP's unzip read it:

- Bytes after the end of central directory record (bsdtar writing to a pipe
  pads the archive with zeros to its block size; some tools append junk), as
  long as the comment and those bytes fit the last 64 KiB that zipfile
  searches too. The end record is taken only where the central directory it
  points at ends exactly at it (or at the ZIP64 end record), so a signature
  in a comment or in the trailing bytes is not mistaken for it.
- A ZIP64 end record wherever a ZIP64 locator precedes the end record (as
  zipfile does), needed or not.
- Files whose ``read``/``readinto`` return fewer bytes than asked (raw files,
  pipes, sockets): only an empty read is the end of the file.

Data before the archive (self-extracting archives, a ZIP appended to another
file) is refused: every offset in the directory would have to be shifted by a
guess, and a checkpoint never starts that way.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, NamedTuple

import numpy as np

from ._crc import crc32, running_crc
from ._transfer import Ranges, Transfer, read_into
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
    ZIP64_DESCRIPTOR,
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

__all__ = ["Directory", "Member", "MemberStream", "Run", "ZipReader"]

TAIL_SIZE = END.size + 0xFFFF + ZIP64_LOCATOR.size + ZIP64_END.size  # 0xFFFF: longest comment
MAX_DEFLATE_RATIO = 1032  # DEFLATE's largest possible expansion
READ_BLOCK = 4 << 20  # compressed bytes read at a time
OUTPUT_BLOCK = 16 << 20  # uncompressed bytes produced between CRC updates
STORED_BLOCK = 2 << 20  # stored bytes read at a time from a local file: the CRC of
# one block overlaps the next read, so only the last block's CRC is waited for
SMALL_MEMBER = 1 << 20  # stored members up to this size (with headers) are read in one request
FEW = 1 << 20  # stored members up to this size (with headers) can be read many at a time
# (1,000 arrays of 131 KiB: 56 ms, against 89 ms read one at a time at 64 KiB)
RUN = 8 << 20  # ... members that follow each other, up to this many bytes per read and per
# block of memory their arrays share (numpy gives 4 MiB and more huge pages: reading into
# fresh memory then faults a page per 2 MiB, not per 4 KiB; at 1 MiB, loading 10,000
# arrays of 13 KiB took 1.4x longer). One array kept alive keeps its block.


@dataclass(frozen=True)
class _Tail:
    """The end of the file, read at once: the end records and often the directory."""

    start: int
    data: bytes


class Member(NamedTuple):
    """One central directory entry, validated against the file's layout (made
    by :class:`Directory` when asked for)."""

    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    limit: int  # where the next member (or the central directory) starts


class Directory(Mapping[str, Member]):
    """The members by name, in the directory's order, kept as columns: an
    archive of 50,000 arrays has as many entries, and a :class:`Member` is
    made only when one is asked for (50,000 tuples cost more to make, and to
    the garbage collector, than all the checks of the directory)."""

    def __init__(self, names: list[str], columns: np.ndarray) -> None:
        self.names = names
        self.index = dict(zip(names, range(len(names))))  # by name, where its column is
        self.columns = columns  # int64, one row per field of Member after the name

    @classmethod
    def of(cls, members: Sequence[Member]) -> Directory:
        rows = np.array([member[1:] for member in members], np.int64).reshape(len(members), len(Member._fields) - 1)
        return cls([member.name for member in members], rows.T.copy())

    def __getitem__(self, name: str) -> Member:
        return Member(name, *self.columns[:, self.index[name]].tolist())

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class Run(NamedTuple):
    """Members read together (:meth:`ZipReader.read_many`): ``data`` holds
    them all; each member's data starts at ``starts`` and spans ``sizes``."""

    data: memoryview
    names: list[str]
    starts: list[int]
    sizes: list[int]


_Entry = tuple[int, int, str, int, int, int, int]
"""A central directory entry: header offset, least bytes of the local header and
data, name, method, CRC-32, compressed size, size."""


def _member_name(raw: bytes, flags: int) -> str:
    """A name as the ZIP flags say it is encoded (UTF-8 or CP437; ASCII reads
    alike in both and takes the codec's fast path)."""
    if raw.isascii():
        return raw.decode("ascii")
    return raw.decode("utf8" if flags & FLAG_UTF8 else "cp437")


class ZipReader:
    """Parse and validate the directory of the ZIP in ``file``.

    ``source`` names the archive in error messages (a URL, path or repr).
    Stored data is read in reads of ``block_size`` bytes (remote files want
    few large range requests; the CRC of one block overlaps the next read).
    Given ``ranges`` (a remote file's range requests) and ``transfer``,
    :meth:`fetch_stored` reads whole members with concurrent requests
    (:func:`~luigi_checkpoint.storage._transfer.read_into`).
    """

    def __init__(
        self,
        file: IO[bytes],
        *,
        source: str,
        block_size: int = STORED_BLOCK,
        ranges: Ranges | None = None,
        transfer: Transfer | None = None,
    ) -> None:
        self.file = file
        self.source = source
        self.block_size = block_size
        self.ranges = ranges
        self.transfer = transfer
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
        first = self.file.read(size)
        if len(first) == size:  # the usual case: one call
            return first
        data = bytearray(size)
        data[: len(first)] = first
        got = len(first) + _fill(self.file, memoryview(data)[len(first) :]) if first else 0
        if got != size:
            raise self._fail(TruncatedArchiveError, f"ends at {offset + got}, "
                             f"{size} bytes were expected at offset {offset}")
        return bytes(data)

    def _read_directory(self) -> Directory:
        file_size = self.file.seek(0, 2)
        tail_start = max(0, file_size - TAIL_SIZE)
        tail = _Tail(tail_start, self.read_at(tail_start, file_size - tail_start))
        directory_offset, directory_size, count = self._find_directory(tail)
        if count * CENTRAL_ENTRY.size > directory_size:
            raise self._fail(NotAnArchiveError, f"{count} members cannot fit a central "
                             f"directory of {directory_size} bytes")
        directory = self._read_near(tail, directory_offset, directory_size)
        members = _plain_directory(directory, count, directory_offset)
        if members is None:  # something to report, or to read one entry at a time
            members = self._check_layout(self._parse_directory(directory, count, directory_offset), directory_offset)
        return members

    def _read_near(self, tail: _Tail, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``, from ``tail`` when it holds them (a
        remote file then costs no request, however many end records are tried)."""
        if tail.start <= offset and offset + size <= tail.start + len(tail.data):
            return tail.data[offset - tail.start : offset - tail.start + size]
        return self.read_at(offset, size)

    def _find_directory(self, tail: _Tail) -> tuple[int, int, int]:
        """Offset, size and member count of the central directory, from the
        first end record in ``tail`` that is consistent with it; if none is,
        the problem of the most likely one (the first tried)."""
        problems: list[ArchiveError] = []
        for position, end in _end_records(tail.data):
            try:
                return self._directory_of(tail, end, tail.start + position)
            except ArchiveError as exc:
                problems.append(exc)
        if problems:
            raise problems[0]
        head = self._read_near(tail, 0, min(4, tail.start + len(tail.data)))
        if head and LOCAL_HEADER.signature.startswith(head):
            raise self._fail(TruncatedArchiveError, "truncated: no end of central directory "
                             "record (the file ends early)")
        raise self._fail(NotAnArchiveError, "not a ZIP archive (no end of central directory)")

    def _directory_of(self, tail: _Tail, end: EndRecord, end_offset: int) -> tuple[int, int, int]:
        """The directory the end record at ``end_offset`` declares, checked to
        end exactly where the end records start."""
        if end.disk or end.directory_disk or end.disk_entries != end.entries:
            raise self._fail(ArchiveError, "multi-disk ZIP archives are not supported")
        records_start, directory = end_offset, (end.directory_offset, end.directory_size, end.entries)
        zip64 = self._zip64_end(tail, end_offset)
        if zip64 is not None:
            records_start, directory = zip64
        elif COUNT_LIMIT == end.entries or ZIP64_LIMIT in (end.directory_size, end.directory_offset):
            raise self._fail(TruncatedArchiveError, "ZIP64 end of central directory locator missing")
        directory_end = directory[0] + directory[1]
        if directory_end > records_start:
            raise self._fail(TruncatedArchiveError, "central directory lies beyond the end records")
        if directory_end < records_start:
            raise self._fail(NotAnArchiveError, f"{records_start - directory_end} bytes between "
                             "the central directory and its end record (data before the archive, "
                             "as in self-extracting archives, is not supported)")
        return directory

    def _zip64_end(self, tail: _Tail, end_offset: int) -> tuple[int, tuple[int, int, int]] | None:
        """Where the ZIP64 end record starts and the directory it declares, if a
        ZIP64 locator precedes the end record at ``end_offset``."""
        locator_offset = end_offset - ZIP64_LOCATOR.size
        if locator_offset < 0:
            return None
        locator = ZIP64_LOCATOR.unpack_from(self._read_near(tail, locator_offset, ZIP64_LOCATOR.size))
        if locator is None:
            return None
        record_offset = locator.end_offset
        if record_offset + ZIP64_END.size > locator_offset:
            raise self._fail(TruncatedArchiveError, "ZIP64 end record lies beyond the file")
        record = ZIP64_END.unpack_from(self._read_near(tail, record_offset, ZIP64_END.size))
        if record is None:
            raise self._fail(NotAnArchiveError, "bad ZIP64 end of central directory record")
        return record_offset, (record.directory_offset, record.directory_size, record.entries)

    def _parse_directory(self, directory: bytes, count: int, directory_offset: int) -> list[_Entry]:
        entries = []
        position = 0
        signature_wanted = CENTRAL_ENTRY.signature
        for _ in range(count):
            (signature, _, _, flags, method, _, _, crc, compressed, size, name_len, extra_len,
             comment_len, *_, offset) = CENTRAL_ENTRY.values_from(directory, position)
            if signature != signature_wanted:
                raise self._fail(NotAnArchiveError, f"bad central directory entry at {position}")
            start = position + CENTRAL_ENTRY.size
            position = start + name_len + extra_len + comment_len
            if position > len(directory):
                raise self._fail(NotAnArchiveError, "central directory entry overruns its end")
            name = _member_name(directory[start : start + name_len], flags)
            if flags & FLAG_ENCRYPTED:
                raise self._fail(ArchiveError, f"member {name!r} is encrypted (unsupported)")
            if method not in (STORED, DEFLATED):
                raise self._fail(ArchiveError, f"member {name!r} uses unsupported compression "
                                 f"method {method}")
            if extra_len:
                extra = directory[start + name_len : start + name_len + extra_len]
                size, compressed, offset = _zip64_values(extra, size, compressed, offset)
            if method == STORED and size != compressed:
                raise self._fail(ArchiveTooLargeError, f"stored member {name!r} declares {size} "
                                 f"bytes but holds {compressed}")
            if method == DEFLATED and size > compressed * MAX_DEFLATE_RATIO + 1024:
                raise self._fail(ArchiveTooLargeError, f"member {name!r} declares {size} bytes, "
                                 f"impossible from {compressed} compressed bytes (zip bomb)")
            minimum = LOCAL_HEADER.size + name_len + compressed  # local header and data, at least
            if offset + minimum > directory_offset:
                raise self._fail(TruncatedArchiveError, f"member {name!r} extends past the "
                                 f"central directory")
            entries.append((offset, minimum, name, method, crc, compressed, size))
        return entries

    def _check_layout(self, entries: list[_Entry], directory_offset: int) -> Directory:
        """The members in the directory's order, each with its limit (the next
        member's offset), refusing overlaps and duplicate names."""
        ordered = sorted(entries, key=lambda entry: entry[0])
        limits = {}
        for index, (offset, minimum, name, *_) in enumerate(ordered):
            limit = ordered[index + 1][0] if index + 1 < len(ordered) else directory_offset
            if offset + minimum > limit:
                raise self._fail(NotAnArchiveError, f"member {name!r} overlaps the next one")
            if name in limits:
                raise self._fail(NotAnArchiveError, f"duplicate member {name!r}")
            limits[name] = limit
        return Directory.of([
            Member(name, method, crc, compressed, size, offset, limits[name])
            for offset, _, name, method, crc, compressed, size in entries
        ])

    def data_offset(self, member: Member) -> int:
        """Absolute offset of the member's (compressed) data, from its local header."""
        if member.name not in self._data_offsets:
            # The name as UTF-8 is at least as long as in any encoding a ZIP uses.
            wanted = LOCAL_HEADER.size + len(member.name.encode("utf8"))
            head = self.read_at(member.header_offset, min(wanted, member.limit - member.header_offset))
            self._data_offsets[member.name] = self._data_start(member, head)
        return self._data_offsets[member.name]

    def _data_start(self, member: Member, head: bytes) -> int:
        """Where the data starts, from ``head``: the file's bytes from the member's
        local header on, at least as many as the header and the directory's name."""
        header = LOCAL_HEADER.unpack_from(head)
        if header is None:
            raise self._fail(NotAnArchiveError, f"member {member.name!r}: bad local header")
        name_end = LOCAL_HEADER.size + header.name_length
        raw_name = (
            head[LOCAL_HEADER.size : name_end]
            if len(head) >= name_end
            else self.read_at(member.header_offset + LOCAL_HEADER.size, header.name_length)
        )
        try:
            local_name: str | None = _member_name(raw_name, header.flags)
        except UnicodeDecodeError:  # not a name at all
            local_name = None
        if local_name != member.name:
            raise self._fail(NotAnArchiveError, f"member {member.name!r}: local header "
                             f"names {raw_name!r}")
        start = member.header_offset + LOCAL_HEADER.size + header.name_length + header.extra_length
        if start + member.compressed_size > member.limit:
            raise self._fail(NotAnArchiveError, f"member {member.name!r}: local header "
                             f"disagrees with the central directory")
        return start

    def read_small(self, name: str) -> bytes | None:
        """The data of stored member ``name``, local header and data read in one
        request, its CRC-32 not checked yet (:meth:`check_crc`); None if the
        member is not stored or spans more than :data:`SMALL_MEMBER` bytes."""
        member = self.member(name)
        span = member.limit - member.header_offset
        if member.method != STORED or span > SMALL_MEMBER:
            return None
        head = self.read_at(member.header_offset, span)
        start = self._data_start(member, head) - member.header_offset
        return head[start : start + member.size]

    def read_many(
        self, names: Iterable[str], memory: Callable[[int, int], memoryview] = lambda _, size: memoryview(bytearray(size))
    ) -> Iterator[Run]:
        """The data, CRC-checked, of each stored member among ``names`` spanning
        at most :data:`FEW` bytes, in the file's order; members that follow each
        other are read together (one read per :data:`RUN` bytes) into
        ``memory(file offset, size)``, which their data shares, and their
        records checked all at once. A member whose local header or CRC-32
        disagrees with the directory is left out: read alone, it raises the
        error that says so."""
        directory = self.members
        picked = np.array([i for i in map(directory.index.get, names) if i is not None], np.int64)
        method, crc, _, size, offset, limit = directory.columns[:, picked]
        keep = np.flatnonzero((method == STORED) & (limit - offset <= FEW))
        keep = keep[np.argsort(offset[keep], kind="stable")]
        picked, crc, size, offset, limit = picked[keep], crc[keep], size[keep], offset[keep], limit[keep]
        for first, last in _runs(offset, limit):
            start = int(offset[first])
            view = memory(start, int(limit[last - 1]) - start)
            self.file.seek(start)
            got = _fill(self.file, view)
            if got != len(view):
                raise self._fail(TruncatedArchiveError, f"ends at {start + got}, {len(view)} bytes "
                                 f"were expected at offset {start}")
            run_names = [directory.names[i] for i in picked[first:last].tolist()]
            run_sizes = size[first:last]
            starts = _local_data_starts(view, offset[first:last] - start, limit[first:last] - start, run_sizes, run_names)
            bounds = zip(starts.tolist(), (starts + run_sizes).tolist())
            crcs = np.array([crc32(view[begin:end]) if begin >= 0 else -1 for begin, end in bounds], np.int64)
            good = np.flatnonzero(crcs == crc[first:last]).tolist()
            yield Run(view, [run_names[i] for i in good], starts[good].tolist(), run_sizes[good].tolist())

    def check_crc(self, name: str, data: bytes | memoryview) -> None:
        """:class:`ChecksumError` unless ``data`` has the CRC-32 of member ``name``."""
        _check_crc(self, self.member(name), crc32(data))

    def span(self, name: str) -> int | None:
        """Bytes from member ``name``'s local header to the next member, if
        :meth:`fetch_stored` can read it: a stored member of a reader with
        ``ranges``, with no more than its headers around its data (never a gap
        that a hostile directory makes up)."""
        member = self.member(name)
        span = member.limit - member.header_offset
        most = member.size + LOCAL_HEADER.size + 2 * 0xFFFF + ZIP64_DESCRIPTOR.size
        if self.ranges is None or member.method != STORED or span > most:
            return None
        return span

    def fetch_stored(self, jobs: Sequence[tuple[str, memoryview]]) -> list[memoryview]:
        """Read each member ``name`` into its ``view`` of :meth:`span` bytes, all
        with concurrent range requests (``ranges``, ``transfer``); return the
        views of their data, CRC-checked."""
        assert self.ranges is not None and self.transfer is not None
        members = [self.member(name) for name, _ in jobs]
        starts = [0] * len(jobs)  # where the data starts in the view, once known
        seen = [0] * len(jobs)
        crcs = [0] * len(jobs)

        def on_part(index: int, part: memoryview) -> None:  # in order, member by member
            member = members[index]
            if seen[index] == 0:
                head = bytes(part[: LOCAL_HEADER.size + len(member.name.encode("utf8"))])
                starts[index] = self._data_start(member, head) - member.header_offset
            low = max(starts[index], seen[index])
            high = min(starts[index] + member.size, seen[index] + len(part))
            if high > low:
                crcs[index] = crc32(part[low - seen[index] : high - seen[index]], crcs[index])
            seen[index] += len(part)

        segments = [(member.header_offset, view) for member, (_, view) in zip(members, jobs)]
        try:
            read_into(self.ranges, segments, self.transfer, on_part)
        except EOFError:
            raise self._fail(TruncatedArchiveError, "member data ends early (truncated file)") from None
        for member, crc in zip(members, crcs):
            _check_crc(self, member, crc)
        return [view[start : start + member.size] for (_, view), start, member in zip(jobs, starts, members)]

    def open(self, name: str) -> MemberStream:
        """A reader of the uncompressed data of member ``name``."""
        member = self.member(name)
        return MemberStream(self, member, self.data_offset(member))

    def read(self, name: str) -> bytes:
        """The whole (uncompressed, CRC-checked) content of member ``name``."""
        data = self.read_small(name)
        if data is not None:
            self.check_crc(name, data)
            return data
        stream = self.open(name)
        data = stream.read(stream.member.size)
        stream.finish()
        return data


def _plain_directory(directory: bytes, count: int, directory_offset: int) -> Directory | None:
    """The members of a plain directory, all its entries checked at once with
    numpy (an archive of 50,000 arrays has as many); None when anything is not
    plain: an entry the checks refuse, a ZIP64 value, bytes after the last
    entry, a signature inside a name. Then the entries are read one at a time,
    which reports the problem: what this accepts, that reading accepts alike."""
    size = CENTRAL_ENTRY.size
    buffer = np.frombuffer(directory, np.uint8)
    if not count or len(buffer) < size:
        return None
    # Where each entry starts: wherever the signature is, if that makes a chain
    # of exactly ``count`` entries, each ending where the next starts.
    start = np.flatnonzero(buffer[: len(buffer) - size + 1] == CENTRAL_ENTRY.signature[0])
    for shift, byte in enumerate(CENTRAL_ENTRY.signature[1:], 1):
        start = start[buffer[start + shift] == byte]
    if len(start) != count or start[0]:
        return None
    entry = buffer[start[:, None] + np.arange(size)].view(CENTRAL_ENTRY.row)[:, 0]
    name_length = entry["name_length"].astype(np.int64)
    end = start + size + name_length + entry["extra_length"] + entry["comment_length"]
    if end[-1] != len(buffer) or not np.array_equal(end[:-1], start[1:]):
        return None
    method, stored_size = entry["method"], entry["size"].astype(np.int64)
    compressed, offset = entry["compressed_size"].astype(np.int64), entry["header_offset"].astype(np.int64)
    least_end = offset + LOCAL_HEADER.size + name_length + compressed  # of the local header and data
    if (
        (entry["flags"] & FLAG_ENCRYPTED).any()
        or not np.isin(method, (STORED, DEFLATED)).all()
        or (np.stack([stored_size, compressed, offset]) == ZIP64_LIMIT).any()
        or ((method == STORED) & (stored_size != compressed)).any()
        or ((method == DEFLATED) & (stored_size > compressed * MAX_DEFLATE_RATIO + 1024)).any()
        or (least_end > directory_offset).any()
    ):
        return None
    order = np.argsort(offset, kind="stable")
    limit = np.empty_like(offset)
    limit[order] = np.append(offset[order][1:], directory_offset)
    if (least_end > limit).any():
        return None
    try:
        names = _names(directory, start + size, name_length, entry["flags"])
    except UnicodeDecodeError:
        return None
    columns = np.stack([method.astype(np.int64), entry["crc"].astype(np.int64), compressed, stored_size, offset, limit])
    members = Directory(names, columns)
    return members if len(members.index) == count else None  # else a duplicate name


def _names(directory: bytes, start: np.ndarray, length: np.ndarray, flags: np.ndarray) -> list[str]:
    """The names at ``start`` in ``directory``, each decoded as its ``flags`` say."""
    text = directory.decode("latin-1")  # one character per byte: an ASCII name reads alike
    bounds = zip(start.tolist(), (start + length).tolist())
    names = [text[begin:end] for begin, end in bounds]
    if not all(map(str.isascii, names)):
        names = [
            name if name.isascii() else _member_name(name.encode("latin-1"), flag)
            for name, flag in zip(names, flags.tolist())
        ]
    return names


def _runs(offset: np.ndarray, limit: np.ndarray) -> Iterator[tuple[int, int]]:
    """The members from ``offset`` to ``limit`` (in the file's order) in runs
    that follow each other without a gap, each spanning at most :data:`RUN`
    bytes (or one member), as ranges of their indices."""
    breaks = np.flatnonzero(offset[1:] != limit[:-1]) + 1
    for first, last in zip([0, *breaks.tolist()], [*breaks.tolist(), len(offset)]):
        while first < last:  # within a gapless stretch, as many as fit RUN bytes
            end = first + max(1, int(np.searchsorted(limit[first:last], offset[first] + RUN, "right")))
            yield first, end
            first = end


def _local_data_starts(
    data: memoryview, at: np.ndarray, limit: np.ndarray, size: np.ndarray, names: list[str]
) -> np.ndarray:
    """Where the data of each member ``names[i]`` starts in ``data``, from its
    local header at ``at[i]`` (its next neighbour at ``limit[i]``), or -1 if
    the local header disagrees with the directory: another signature, another
    name, data running past the next member."""
    buffer = np.frombuffer(data, np.uint8)
    local = buffer[at[:, None] + np.arange(LOCAL_HEADER.size)].view(LOCAL_HEADER.row)[:, 0]
    name_length = local["name_length"].astype(np.int64)
    encoded = (  # an ASCII name is the same bytes in any encoding a ZIP uses
        [name.encode("ascii") for name in names] if "".join(names).isascii()
        else [_member_bytes(name, flag) for name, flag in zip(names, local["flags"].tolist())]
    )
    wanted = np.fromiter(map(len, encoded), np.int64, len(names))
    begin = at + LOCAL_HEADER.size + name_length + local["extra_length"]
    good = (local["signature"] == LOCAL_HEADER.signature) & (name_length == wanted) & (begin + size <= limit)
    name_start = (at + LOCAL_HEADER.size)[good]
    lengths = wanted[good]
    expected = np.frombuffer(b"".join([encoded[i] for i in np.flatnonzero(good).tolist()]), np.uint8)
    placed = np.repeat(name_start - (np.cumsum(lengths) - lengths), lengths) + np.arange(len(expected))
    wrong = np.concatenate([[0], np.cumsum(buffer[placed] != expected)])
    ends = np.cumsum(lengths)
    good[good] = wrong[ends] == wrong[ends - lengths]  # no byte of the name differs
    return np.where(good, begin, -1)


def _member_bytes(name: str, flags: int) -> bytes:
    """``name`` as a local header with ``flags`` would hold it (b"" if it cannot)."""
    try:
        return name.encode("utf8" if flags & FLAG_UTF8 else "cp437")
    except UnicodeEncodeError:
        return b""


def _check_crc(reader: ZipReader, member: Member, computed: int) -> None:
    if computed != member.crc:
        raise reader._fail(ChecksumError, f"member {member.name!r}: CRC-32 mismatch "
                           f"(stored {member.crc:08x}, computed {computed:08x})")


def _end_records(tail: bytes) -> list[tuple[int, EndRecord]]:
    """Every end record in ``tail`` whose comment fits in it, with its position:
    first those whose comment ends the file (the usual case), then those
    followed by other bytes; the last in the file first within each."""
    exact, followed = [], []
    position = tail.rfind(END.signature, 0, max(0, len(tail) - END.size + 4))
    while position >= 0:
        end = END.unpack_from(tail, position)
        assert end is not None  # the signature was found there
        stop = position + END.size + end.comment_length
        if stop <= len(tail):
            (exact if stop == len(tail) else followed).append((position, end))
        position = tail.rfind(END.signature, 0, position + 3)
    return exact + followed


def _fill(file: IO[bytes], view: memoryview) -> int:
    """Read from ``file`` into ``view`` until it is full or the file ends;
    return the bytes read. Raw files and pipes may return fewer bytes than
    asked at any time: only an empty read is the end."""
    readinto = getattr(file, "readinto", None)
    filled = 0
    while filled < len(view):
        if readinto is not None:
            got = readinto(view[filled:])
        else:
            data = file.read(len(view) - filled)
            got = len(data)
            view[filled : filled + got] = data
        if not got:
            break
        filled += got
    return filled


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
        if _fill(file, view) != len(view):
            raise self._fail(TruncatedArchiveError, "data ends early (truncated file)")
        self._position += len(view)
        self._left_compressed -= len(view)

    def _next_compressed(self) -> bytes:
        size = min(READ_BLOCK, self._left_compressed)
        data = self._reader.read_at(self._position, size)
        self._position += size
        self._left_compressed -= size
        return data

    def _inflate_into(self, view: memoryview) -> None:
        filled = 0
        while filled < len(view):
            out = self._inflate(len(view) - filled)
            if not out:
                raise self._fail(TruncatedArchiveError,
                                 "compressed data ends before the declared size")
            view[filled : filled + len(out)] = out
            filled += len(out)

    def _inflate(self, limit: int) -> bytes:
        """The next 1 to ``limit`` inflated bytes; empty only at the end of the
        DEFLATE stream.

        Having passed zlib every compressed byte is not the end: when the
        output limit cuts it short, zlib keeps input it has consumed but not
        yet expanded (a long match, the end-of-stream code), so only a call
        that makes no progress at all is. Without input left that is a
        truncated stream; with input, a corrupt one (zlib reports no error).
        """
        inflater = self._inflater
        assert inflater is not None
        try:
            while not inflater.eof:
                if not self._pending and self._left_compressed:
                    self._pending = self._next_compressed()
                before = len(self._pending)
                out = inflater.decompress(self._pending, limit)
                self._pending = inflater.unconsumed_tail
                if out:
                    return out
                if len(self._pending) == before and not inflater.eof:
                    if before:
                        raise self._fail(ChecksumError,
                                         "corrupt DEFLATE data (inflate makes no progress)")
                    raise self._fail(TruncatedArchiveError, "compressed data is cut short")
        except zlib.error as exc:
            raise self._fail(ChecksumError, f"corrupt DEFLATE data: {exc}") from None
        return b""

    def finish(self) -> None:
        """Check that all data was read, nothing more is there and the CRC matches."""
        if self._left:
            raise self._fail(TruncatedArchiveError, f"{self._left} bytes left unread")
        if self._inflater is not None and self._inflate(1):
            raise self._fail(ArchiveTooLargeError, "inflates beyond its declared size")
        _check_crc(self._reader, self.member, self._crc)
