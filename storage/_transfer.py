"""How one object moves to and from an object store: concurrent requests,
the way ``s3fs``'s own ``cat_file`` and ``put_file`` move bytes.

One request after another leaves the connection idle between responses, and
a loopback or LAN server mostly waits on one request's latency. So a read of
many members (the arrays being restored) is planned over the object's bytes:
members that follow each other in the object are read by the same requests,
:attr:`Transfer.concurrency` at a time, each filling its part of the
destination views in place. How large a request is depends on the reader
(:class:`Ranges`): one that copies a whole response into the views keeps at
most ``concurrency * part_size`` bytes in flight; one that streams a response
straight into them (:mod:`._s3read`) holds no copy, so its requests are as few
as the concurrency allows, each at least a part (every request has a fixed
cost: a round trip on S3, the whole object read again on moto). An upload sends
its parts the same way (:mod:`._s3upload`).

The settings come with the URL, as two keys of ``storage_options`` that
:func:`~luigi_checkpoint.storage.fs.resolve` takes out before fsspec sees the
rest: ``transfer_concurrency`` and ``transfer_part_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import TransferOptionError

__all__ = ["OPTION_KEYS", "BufferedRanges", "Ranges", "Transfer", "plan", "read_into"]

MIN_PART = 5 << 20  # S3's smallest part (but the last) of a multipart upload
OPTION_KEYS = {"transfer_concurrency": "concurrency", "transfer_part_size": "part_size"}


@dataclass(frozen=True)
class Transfer:
    """``concurrency`` requests at once, each moving ``part_size`` bytes."""

    concurrency: int = 8
    part_size: int = 16 << 20

    def __post_init__(self) -> None:
        if type(self.concurrency) is not int or self.concurrency < 1:
            raise TransferOptionError(
                f"storage option transfer_concurrency={self.concurrency!r}: give an int >= 1"
            )
        if type(self.part_size) is not int or self.part_size < MIN_PART:
            raise TransferOptionError(
                f"storage option transfer_part_size={self.part_size!r}: give an int of at "
                f"least {MIN_PART} bytes (S3's smallest part)"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> tuple[Transfer, dict[str, Any]]:
        """The transfer settings in ``options`` and the options left for fsspec."""
        ours = {field: options[key] for key, field in OPTION_KEYS.items() if key in options}
        rest = {key: value for key, value in options.items() if key not in OPTION_KEYS}
        return cls(**ours), rest


class Ranges(Protocol):
    """Fills ``views``, one after another, with an object's bytes from
    ``offset`` on; raises ``EOFError`` if the object ends first."""

    streams: bool  # True: writes straight into the views, holding no copy

    def __call__(self, offset: int, views: Sequence[memoryview]) -> None: ...


class BufferedRanges:
    """:class:`Ranges` through ``fetch(start, end) -> bytes`` (an fsspec
    buffered file's ``_fetch_range``), copied into the views."""

    streams = False

    def __init__(self, fetch: Callable[[int, int], bytes]) -> None:
        self.fetch = fetch

    def __call__(self, offset: int, views: Sequence[memoryview]) -> None:
        size = sum(map(len, views))
        data = memoryview(self.fetch(offset, offset + size))
        if len(data) != size:
            raise EOFError(f"{size} bytes asked at offset {offset}, {len(data)} came")
        for view in views:
            view[:] = data[: len(view)]
            data = data[len(view) :]


Piece = tuple[int, memoryview]  # (segment index, part of its view)


def read_into(
    ranges: Ranges,
    segments: Sequence[tuple[int, memoryview]],
    transfer: Transfer,
    on_part: Callable[[int, memoryview], None],
) -> None:
    """Fill each ``(offset, view)`` of ``segments`` (not overlapping) with the
    object's bytes at ``offset`` onwards, with requests planned by
    :func:`plan` and sent ``concurrency`` at a time; ``on_part(segment index,
    part)`` sees the filled parts in the caller's thread, each segment's in
    order (running CRCs).

    The first failure is raised once no request is writing any more: a
    failed read never leaves a thread writing into a view.
    """
    requests = plan(segments, transfer, streams=ranges.streams)

    def fill(offset: int, pieces: list[Piece]) -> None:
        ranges(offset, [view for _, view in pieces])

    with ThreadPoolExecutor(transfer.concurrency, thread_name_prefix="range-read") as pool:
        pending: dict[int, Future[None]] = {}
        try:
            for number, (_, pieces) in enumerate(requests):
                for ahead in range(number + len(pending), min(number + transfer.concurrency, len(requests))):
                    pending[ahead] = pool.submit(fill, *requests[ahead])
                pending.pop(number).result()
                for index, view in pieces:
                    on_part(index, view)
        except BaseException:
            for future in pending.values():
                future.cancel()
            raise


def plan(
    segments: Sequence[tuple[int, memoryview]], transfer: Transfer, *, streams: bool
) -> list[tuple[int, list[Piece]]]:
    """The requests that read ``segments``, in the object's order: ``(offset,
    pieces)``, the pieces filled one after another from ``offset`` on.

    Segments that follow each other in the object form one run; each run is
    split into the fewest requests of equal size no larger than ``part_size``
    bytes, or for a streaming reader than the larger of ``part_size`` and
    the total over ``concurrency`` (no request of a few bytes costs as much
    as a full one: sizes are equal).
    """
    order = sorted(range(len(segments)), key=lambda index: segments[index][0])
    runs: list[tuple[int, list[Piece]]] = []
    end = -1
    for index in order:
        offset, view = segments[index]
        if offset != end:
            runs.append((offset, []))
        runs[-1][1].append((index, view))
        end = offset + len(view)
    most = transfer.part_size
    if streams:
        total = sum(len(view) for _, view in segments)
        most = max(most, -(-total // transfer.concurrency))
    requests = []
    for offset, pieces in runs:
        size = sum(len(view) for _, view in pieces)
        for start, end in _split(size, most):
            requests.append((offset + start, _cut(pieces, start, end)))
    return requests


def _cut(pieces: list[Piece], start: int, end: int) -> list[Piece]:
    """The parts of ``pieces`` (laid end to end from 0) between ``start`` and ``end``."""
    cut, position = [], 0
    for index, view in pieces:
        low, high = max(start - position, 0), min(end - position, len(view))
        if low < high:
            cut.append((index, view[low:high]))
        position += len(view)
    return cut


def _split(size: int, most: int) -> list[tuple[int, int]]:
    """``size`` bytes in the fewest parts of at most ``most`` bytes, of equal
    size (a part of a few bytes would cost a request as a full one does)."""
    count = max(1, -(-size // most))
    step = -(-size // count)
    return [(start, min(start + step, size)) for start in range(0, size, step)]
