"""Theano's ``gpuarray`` members, adapted to plain NPY streams.

Theano's ``pkl_utils.dump`` wrote a ``GpuArray`` as the persistent id
``gpuarray.<member>``, whose member starts with the pickled name of the GPU
context (a short string or None) followed by the array in NPY format. This
adapter reads that name with the archive's own safe loader (a string or
None, nothing else) and hands the reader the NPY stream behind it,
so nothing else knows about the prefix.
"""

from __future__ import annotations

import pickle

from . import _trust as trust
from ._reading import NpyStream
from ._zipread import MemberStream, ZipReader
from .errors import BadPersistentIdError, CheckpointError

__all__ = ["has_context_prefix", "npy_stream"]

CONTEXT_PREFIX_MAX = 4096  # a pickled context name is tiny


def has_context_prefix(reader: ZipReader, name: str) -> bool:
    """Whether member ``name`` starts with a pickle (a ``gpuarray`` member), for
    readers that meet members without the pickle's persistent ids."""
    stream = reader.open(name)
    return stream.read(min(2, stream.remaining)) == pickle.PROTO + b"\x02"


def npy_stream(stream: MemberStream, where: str) -> NpyStream:
    """The NPY stream after the pickled context name that starts ``stream``."""
    prefix = stream.read(min(stream.remaining, CONTEXT_PREFIX_MAX))
    try:
        context, end = trust.load_prefix(prefix, source=f"{where} (gpuarray context name)")
    except CheckpointError as exc:
        raise BadPersistentIdError(f"{where}: bad gpuarray context name: {exc}") from None
    if not isinstance(context, (str, bytes, type(None))):
        raise BadPersistentIdError(f"{where}: gpuarray context name is {type(context).__name__}")
    return _AfterPrefix(prefix[end:], stream)


class _AfterPrefix:
    """``stream`` with ``head`` (bytes already read from it) put back in front."""

    def __init__(self, head: bytes, stream: MemberStream) -> None:
        self._head = head
        self._stream = stream

    @property
    def remaining(self) -> int:
        return len(self._head) + self._stream.remaining

    def read(self, size: int) -> bytes:
        taken, self._head = self._head[:size], self._head[size:]
        return taken + self._stream.read(size - len(taken))

    def readinto(self, view: memoryview) -> int:
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        taken = min(len(self._head), len(view))
        view[:taken] = self._head[:taken]
        self._head = self._head[taken:]
        return taken + self._stream.readinto(view[taken:])

    def finish(self) -> None:
        self._stream.finish()
