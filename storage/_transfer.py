"""How one object moves to and from an object store: concurrent requests of
bounded size, the way ``s3fs``'s own ``cat_file`` and ``put_file`` move bytes.

One request after another leaves the connection idle between responses, and
a loopback or LAN server mostly waits on one request's latency. So a large
read is split into parts of :attr:`Transfer.part_size` bytes fetched
:attr:`Transfer.concurrency` at a time, each copied into its place in the
destination (the array being restored) as it arrives; an upload sends its
parts the same way (:mod:`._s3upload`). Memory in flight is at most
``concurrency * part_size`` bytes, whatever the object's size.

The settings come with the URL, as two keys of ``storage_options`` that
:func:`~luigi_checkpoint.storage.fs.resolve` takes out before fsspec sees the
rest: ``transfer_concurrency`` and ``transfer_part_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import TransferOptionError

__all__ = ["OPTION_KEYS", "Transfer", "read_into"]

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


def read_into(
    fetch: Callable[[int, int], bytes],
    segments: Sequence[tuple[int, memoryview]],
    transfer: Transfer,
    on_part: Callable[[int, memoryview], None],
) -> None:
    """Fill each ``(offset, view)`` of ``segments`` with the bytes at ``offset``
    onwards, ``fetch(start, end)`` called for their parts ``concurrency`` at a
    time (across segments: many arrays of one part each come at once too);
    ``on_part(segment index, part)`` sees each filled part in order, in the
    caller's thread (running CRCs).

    The first failure is raised once no part is being written any more: a
    failed read never leaves a thread writing into a view.
    """
    parts = [
        (index, view, offset, start, end)
        for index, (offset, view) in enumerate(segments)
        for start, end in _split(len(view), transfer.part_size)
    ]

    def fill(view: memoryview, offset: int, start: int, end: int) -> None:
        data = fetch(offset + start, offset + end)
        if len(data) != end - start:
            raise EOFError(f"{end - start} bytes asked at offset {offset + start}, {len(data)} came")
        view[start:end] = data

    with ThreadPoolExecutor(transfer.concurrency, thread_name_prefix="range-read") as pool:
        pending: dict[int, Future[None]] = {}
        try:
            for number, (index, view, _, start, end) in enumerate(parts):
                for ahead in range(number + len(pending), min(number + transfer.concurrency, len(parts))):
                    pending[ahead] = pool.submit(fill, *parts[ahead][1:])
                pending.pop(number).result()
                on_part(index, view[start:end])
        except BaseException:
            for future in pending.values():
                future.cancel()
            raise


def _split(size: int, most: int) -> list[tuple[int, int]]:
    """``size`` bytes in the fewest parts of at most ``most`` bytes, of equal
    size (a part of a few bytes would cost a request as a full one does)."""
    count = max(1, -(-size // most))
    step = -(-size // count)
    return [(start, min(start + step, size)) for start in range(0, size, step)]
