"""NPY headers: writing them for arrays and parsing them with validation.

An NPY stream is ``\\x93NUMPY``, a version (1.0, 2.0 or 3.0), the header
length, a Python-literal dict ``{'descr', 'fortran_order', 'shape'}`` padded
with spaces and ended by ``\\n``, then the raw array data. Headers written
here are padded to a multiple of 64 bytes, as numpy does, so that data after
a 64-byte aligned header start is aligned too.

Parsing never trusts the header: its length, literal, dtype and shape are
checked against the member's real size before anything is allocated, and
against what every supported numpy can build (:func:`parse_header` is the one
judge for every reader, so ``verify`` and ``load`` agree). An object dtype is
refused unless the caller reads pickled data (``numpy.save`` with
``allow_pickle`` writes a pickle of the whole array after such a header).
"""

from __future__ import annotations

import ast
import functools
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npformat

from .errors import BadNpyHeaderError

__all__ = [
    "MAGIC",
    "PREFIX_SIZE",
    "NpyHeader",
    "array_chunks",
    "header_bytes",
    "header_length",
    "parse_header",
    "is_written_fortran",
]

MAGIC = b"\x93NUMPY"
PREFIX_SIZE = 10  # magic, 2 version bytes, and a 2-byte length for version 1.0
ALIGN = 64
MAX_HEADER_SIZE = 1 << 20
CACHED_HEADER = 256  # parsed headers up to this size are remembered
COPY_CHUNK = 16 << 20  # bytes copied at a time from a non-contiguous array
MAX_DIMS = 64 if int(np.__version__.split(".")[0]) >= 2 else 32  # numpy's NPY_MAXDIMS
INTP_MAX = int(np.iinfo(np.intp).max)


@dataclass(frozen=True)
class NpyHeader:
    """A parsed and validated NPY header."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    size: int  # bytes of the header itself, data follows

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def pickled(self) -> bool:
        """Whether the data is a pickle of the array (object dtypes), not its items."""
        return self.dtype.hasobject


def is_written_fortran(array: np.ndarray) -> bool:
    """Whether ``array`` is written in Fortran order (F- but not C-contiguous)."""
    return bool(array.flags.f_contiguous and not array.flags.c_contiguous)


def header_bytes(array: np.ndarray) -> bytes:
    """The NPY header of ``array`` (version 1.0 when it fits, else 2.0 or 3.0)."""
    return header_and_data(array)[0]


def contiguous_data(array: np.ndarray) -> np.ndarray | memoryview | None:
    """The data of a C- or F-contiguous array as one buffer of its own memory,
    in the order its header declares (None for other arrays): the array
    itself where numpy exports its dtype as a buffer (native numbers), else
    a bytes view."""
    return header_and_data(array)[1]


def header_and_data(array: np.ndarray) -> tuple[bytes, np.ndarray | memoryview | None]:
    """:func:`header_bytes` and :func:`contiguous_data` of ``array`` at once.

    Both follow from the array's dtype, shape and strides, which are
    remembered (up to :data:`LAYOUTS` of them): a model's thousands of arrays
    have a few dozen, and a save asks once per array.
    """
    dtype = array.dtype
    key = (dtype, array.shape, array.strides)
    known = _layouts.get(key)
    if known is None:
        known = _layout(array)
        if dtype.fields is None and dtype.metadata is None:  # equal such dtypes have one descr
            if len(_layouts) >= LAYOUTS:
                _layouts.clear()
            _layouts[key] = known
    header, how = known
    if how is None:
        return header, None
    if how == _OWN:
        return header, array
    source = array.T if how & _TRANSPOSED else array
    return header, _bytes(source) if how & _AS_BYTES else source


_OWN, _TRANSPOSED, _AS_BYTES = 0, 1, 2
"""How an array's data is one buffer: ``_OWN`` the array itself, else a bit
set of transposed (F-contiguous: the transpose is C-contiguous) and as bytes
(numpy exports the dtype only as a bytes view)."""
LAYOUTS = 4096
_layouts: dict[tuple[np.dtype, tuple[int, ...], tuple[int, ...]], tuple[bytes, int | None]] = {}


def _layout(array: np.ndarray) -> tuple[bytes, int | None]:
    fortran = is_written_fortran(array)
    header = _header(array.dtype, array.shape, fortran)
    if not (array.flags.c_contiguous or fortran):
        return header, None
    dtype = array.dtype
    how = (_TRANSPOSED if fortran else 0) | (0 if dtype.kind in "biufc" and dtype.isnative else _AS_BYTES)
    return header, how


def _header(dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> bytes:
    literal = repr(
        {
            "descr": npformat.dtype_to_descr(dtype),
            "fortran_order": fortran,
            "shape": tuple(shape),
        }
    )
    try:
        text = literal.encode("latin1")
        versions = [(1, 0), (2, 0)]
    except UnicodeEncodeError:
        text = literal.encode("utf8")
        versions = [(3, 0)]
    for version in versions:
        length_format = "<H" if version == (1, 0) else "<I"
        fixed = len(MAGIC) + 2 + struct.calcsize(length_format)
        total = -(-(fixed + len(text) + 1) // ALIGN) * ALIGN
        body = total - fixed
        if body < 1 << (8 * struct.calcsize(length_format)):
            padded = text + b" " * (body - len(text) - 1) + b"\n"
            return MAGIC + bytes(version) + struct.pack(length_format, body) + padded
    raise ValueError(f"NPY header of {len(text)} bytes is too large")


def header_length(prefix: bytes) -> int:
    """Total header size announced by the first :data:`PREFIX_SIZE` bytes
    (for versions 2.0 and 3.0 the length field is 4 bytes, so the prefix must
    hold 12 bytes; raises :class:`ValueError` on anything malformed)."""
    if len(prefix) < PREFIX_SIZE or prefix[:6] != MAGIC:
        raise ValueError("not an NPY stream (bad magic)")
    version = (prefix[6], prefix[7])
    if version == (1, 0):
        return 10 + struct.unpack("<H", prefix[8:10])[0]
    if version in ((2, 0), (3, 0)):
        if len(prefix) < 12:
            raise ValueError("NPY header truncated")
        return 12 + struct.unpack("<I", prefix[8:12])[0]
    raise ValueError(f"unsupported NPY version {version[0]}.{version[1]}")


def header_lengths(prefixes: np.ndarray) -> np.ndarray:
    """:func:`header_length` of many NPYs at once: ``prefixes`` holds the first
    12 bytes of each (uint8 rows); -1 where :func:`header_length` would refuse."""
    magic = (prefixes[:, : len(MAGIC)] == np.frombuffer(MAGIC, np.uint8)).all(axis=1)
    minor = prefixes[:, 7] == 0
    short = magic & minor & (prefixes[:, 6] == 1)
    long = magic & minor & ((prefixes[:, 6] == 2) | (prefixes[:, 6] == 3))
    fields = prefixes[:, 8:12].astype(np.int64)
    lengths = np.where(short, 10 + fields[:, 0] + (fields[:, 1] << 8), -1)
    return np.where(long, 12 + fields[:, 0] + (fields[:, 1] << 8) + (fields[:, 2] << 16) + (fields[:, 3] << 24), lengths)


def parse_header(header: bytes, *, data_size: int, where: str, pickled: bool = False) -> NpyHeader:
    """Parse and validate a complete NPY header.

    ``data_size`` is the number of bytes that follow the header in the member;
    the header's shape times item size must equal it. With ``pickled`` an
    object dtype is accepted, and its data (a pickle) may have any size.
    Raises :class:`BadNpyHeaderError` mentioning ``where``.
    """
    try:
        if len(header) <= CACHED_HEADER:
            result = _cached_parse(bytes(header))
        else:
            result = _parse(header)
    except (
        ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError, OverflowError
    ) as exc:
        raise BadNpyHeaderError(f"{where}: bad NPY header: {exc}") from None
    if result.pickled and not pickled:
        raise BadNpyHeaderError(
            f"{where}: bad NPY header: object dtype is refused (it would need unpickling)"
        )
    if not result.pickled and result.nbytes != data_size:
        raise BadNpyHeaderError(
            f"{where}: NPY header declares shape {result.shape} of {result.dtype.str} "
            f"({result.nbytes} bytes) but the member holds {data_size} bytes of data"
        )
    return result


@functools.lru_cache(maxsize=1024)
def _cached_parse(header: bytes) -> NpyHeader:
    """:func:`_parse` of the usual short headers: parsing one costs more than
    reading a small array, and a model's thousands of arrays have a few dozen
    (failures are not remembered; memory stays under 1024 short headers)."""
    return _parse(header)


def _parse(header: bytes) -> NpyHeader:
    size = header_length(header[:12])
    if size > MAX_HEADER_SIZE:
        raise ValueError(f"header of {size} bytes exceeds {MAX_HEADER_SIZE}")
    if len(header) != size:
        raise ValueError("header truncated")
    body = header[12 if header[6] > 1 else 10 :]
    literal = ast.literal_eval(body.decode("utf8" if header[6] == 3 else "latin1"))
    dtype, shape, fortran = _check_literal(literal)
    return NpyHeader(dtype=dtype, shape=shape, fortran_order=fortran, size=size)


def _check_literal(literal: object) -> tuple[np.dtype, tuple[int, ...], bool]:
    if not isinstance(literal, dict) or set(literal) != {"descr", "fortran_order", "shape"}:
        raise ValueError("header is not a dict of descr, fortran_order and shape")
    shape = literal["shape"]
    if not isinstance(shape, tuple) or not all(
        type(n) is int and n >= 0 for n in shape
    ):
        raise ValueError(f"bad shape {shape!r}")
    if not isinstance(literal["fortran_order"], bool):
        raise ValueError("fortran_order is not a bool")
    dtype = npformat.descr_to_dtype(literal["descr"])
    _check_buildable(dtype, shape)
    return dtype, shape, literal["fortran_order"]


def _check_buildable(dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Refuse what some supported numpy cannot make into an array of exactly
    this dtype and shape: too many dimensions; a sub-array dtype or one numpy
    adapts (``|S0`` arrays hold ``|S1``), whose array would not match the
    header's size (numpy never writes either); more elements or bytes than
    ``intp`` counts. Zero-length axes do not excuse the others: numpy
    multiplies the nonzero ones, and 2**64 empty items have no valid size."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"too many dimensions ({len(shape)}, numpy allows {MAX_DIMS})")
    if dtype.subdtype is not None or np.empty(0, dtype).dtype != dtype:
        raise ValueError(f"dtype {dtype} (numpy makes arrays of another dtype from it)")
    if math.prod(n for n in shape if n) * max(dtype.itemsize, 1) > INTP_MAX:
        raise ValueError(f"shape {shape} of {dtype.str} is beyond what numpy can index")


def array_chunks(array: np.ndarray) -> Iterator[memoryview]:
    """The data of ``array`` as byte buffers, in the order its header declares.

    Contiguous arrays yield one view of their own memory (no copy); other
    arrays are copied in chunks of at most :data:`COPY_CHUNK` bytes (or one
    item, if larger).
    """
    if array.nbytes == 0:
        return
    if array.flags.c_contiguous or array.flags.f_contiguous:
        source = array.T if is_written_fortran(array) else array
        yield _bytes(source)
        return
    yield from _copied_chunks(array)


def _copied_chunks(array: np.ndarray) -> Iterator[memoryview]:
    row = array[0].nbytes
    if array.ndim > 1 and row > COPY_CHUNK:
        for sub in array:
            yield from _copied_chunks(sub)
        return
    rows = max(1, COPY_CHUNK // max(1, row))
    for start in range(0, array.shape[0], rows):
        yield _bytes(np.ascontiguousarray(array[start : start + rows]))


def _bytes(array: np.ndarray) -> memoryview:
    """The memory of a C-contiguous array as bytes."""
    return memoryview(array.reshape(-1).view(np.uint8))
