"""Which calls a data pickle makes: the call policy of :func:`luigi_checkpoint.storage._trust.audit_pickle`.

Trusted globals are called only as picklers call them, so a small stream cannot
make them allocate a lot (``bytes(10**9)``, ``list(range(N))``, ``numpy.void(N)``).
The audit simulates the stack with the kinds of :func:`kind` and follows each
call (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ``, ``INST``), also through the
helpers that call an argument (``copyreg.__newobj__``, ``__newobj_ex__``,
``_reconstructor``, numpy's random ``__generator_ctor``/``__randomstate_ctor``).
Refused:

- calling numpy arrays, scalar types, dtype classes and random classes (numpy
  rebuilds them through its helpers, which take data, not sizes);
- ``_reconstruct`` of a non-empty array: numpy writes shape ``(0,)`` and fills
  it by ``BUILD`` with bytes present in the stream (numpy checks their size); an
  object array's list must hold exactly as many items as its shape (numpy reads
  past a shorter list);
- ``scalar`` without its bytes (it would allocate the dtype's itemsize);
- the copying constructors (``bytes``, ``bytearray``, ``str``, ``list``, ``tuple``,
  ``set``, ``frozenset``, ``dict``, ``OrderedDict``, ``deque``, ``Counter``,
  ``defaultdict``) and ``_codecs.encode`` given anything but data the stream
  spells out (never an int, a range, an array or any other computed value);
  ``_codecs.encode`` only with ``latin1``, as pickle writes it; keyword arguments;
- dtype arguments that are not strings, dtypes or globals (numpy would put the
  repr of any object into its error message);
- copying in total more than twice the size of the stream;
- arrays filled from lists (object and record arrays) of a dtype whose size
  the stream does not spell out, or of more bytes in total than
  ``FILL_RATIO`` times the stream: a record dtype can declare any size
  (``V80000000``, or a field of ten million objects), and numpy allocates and
  fills it for each element before it looks at the list.

Names the caller trusts beyond the defaults are called freely.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._numpy_compat import CORE, NUMPY2

NUMPY_RANDOM_CLASSES = (
    "_generator.Generator", "mtrand.RandomState", "_mt19937.MT19937", "_pcg64.PCG64",
    "_pcg64.PCG64DXSM", "_philox.Philox", "_sfc64.SFC64", "bit_generator.SeedSequence",
    "bit_generator.SeedlessSeedSequence",
)
NUMPY_RANDOM_HELPERS = (
    "bit_generator.__pyx_unpickle_SeedSequence", "_pickle.__generator_ctor",
    "_pickle.__bit_generator_ctor", "_pickle.__randomstate_ctor", "__RandomState_ctor",
)
# numpy scalar types (numpy.float64) and dtype classes (numpy.dtypes.Float64DType)
NUMPY_TYPES = {*np.sctypeDict.values(), *(type(np.dtype(c)) for c in np.typecodes["All"])}

_RECONSTRUCT, _SCALAR = f"{CORE}.multiarray._reconstruct", f"{CORE}.multiarray.scalar"
_NOT_CALLED = frozenset([
    "numpy.ndarray", *(f"{t.__module__}.{t.__qualname__}" for t in NUMPY_TYPES),
    *(f"numpy.random.{name}" for name in NUMPY_RANDOM_CLASSES),
])
DATA = ("str", "bytes", "list", "tuple", "dict", "set")  # kinds the stream spells out itself
_DTYPE = ("str", "bytes", "dtype", "global")
ARGUMENT_KINDS = {
    **{f"builtins.{name}": (0, DATA)
       for name in ("bytes", "bytearray", "list", "tuple", "set", "frozenset", "dict")},
    **{f"collections.{name}": (0, DATA) for name in ("OrderedDict", "deque", "Counter")},
    "collections.defaultdict": (1, DATA), "builtins.str": (0, ("str", "bytes")),
    "_codecs.encode": (0, ("str",)), "numpy.dtype": (0, _DTYPE), _SCALAR: (0, _DTYPE),
    _RECONSTRUCT: (2, _DTYPE), f"{CORE}.numeric._frombuffer": (1, _DTYPE),
    **{f"numpy.random._pickle.__{name}_ctor": (0, ("str", "global", "random"))
       for name in ("generator", "bit_generator", "randomstate")},
}
"""Callable -> (position of the argument it copies or interprets, kinds allowed there)."""
_CALLING_CTORS = {f"numpy.random._pickle.__{name}_ctor" for name in ("generator", "randomstate")}
RESULT_KINDS = {
    "builtins.bytes": "bytes", "builtins.bytearray": "bytes", "_codecs.encode": "bytes",
    "numpy.dtype": "dtype", f"{CORE}._internal._convert_to_stringdtype_kwargs": "dtype",
    _RECONSTRUCT: "array", f"{CORE}.numeric._frombuffer": "array",
    **{f"numpy.random.{name}": "random" for name in NUMPY_RANDOM_HELPERS},
}
"""Callable -> kind of what it returns (other calls return a ``"computed"`` value)."""
MADE = {"EMPTY_LIST": "list", "LIST": "list", "EMPTY_DICT": "dict", "DICT": "dict",
        "EMPTY_SET": "set", "FROZENSET": "set", "BINBYTES": "bytes", "SHORT_BINBYTES": "bytes",
        "BINBYTES8": "bytes", "BYTEARRAY8": "bytes"}
"""Opcode -> kind of the container it pushes."""
FILL_RATIO = 16
"""Bytes of arrays filled from lists allowed per byte of stream: an object
takes at least one byte of stream (``N``) and eight of array."""
_PLAIN_DTYPE = re.compile(r"[<>|=]?[A-Za-z?]\d*")
_STRINGDTYPE_SIZE = np.dtype(np.dtypes.StringDType()).itemsize if NUMPY2 else None


@dataclass(frozen=True)
class Global:
    """Stack value of the audit: a global imported under ``name``."""

    name: str


@dataclass
class Value:
    """Stack value of the audit: what an opcode or call made, its size in items
    and, for a dtype, its bytes per element when the stream states them, whether
    it is a fresh copy (``numpy.dtype(spec, align, True)``), and whether a
    ``BUILD`` or anything else has used it yet."""

    kind: str
    size: int = 0
    itemsize: int | None = None
    fresh: bool = False
    built: bool = False
    used: bool = False


def kind(value: Any) -> str:
    """``"str"``, ``"int"`` or ``"tuple"`` (constants), ``"global"``, a :class:`Value`'s kind,
    else ``"computed"``."""
    if isinstance(value, Value):
        return value.kind
    return {str: "str", int: "int", tuple: "tuple", Global: "global"}.get(type(value), "computed")


def size(value: Any) -> int:
    return value.size if isinstance(value, Value) else len(value) if kind(value) in DATA else 0


def callee(target: Any, arguments: Any, kwargs: Any) -> tuple[Any, Any, Any]:
    """What a call really calls: the class ``copyreg`` helpers build, the ctor numpy calls."""
    while isinstance(target, Global) and isinstance(arguments, tuple):
        name, count = target.name, len(arguments)
        if name == "copyreg.__newobj__" and count:
            target, arguments = arguments[0], arguments[1:]
        elif name == "copyreg.__newobj_ex__" and count == 3:
            target, arguments, kwargs = arguments
        elif name == "copyreg._reconstructor" and count == 3:
            target, arguments = arguments[1], arguments[2:]
        elif name in _CALLING_CTORS and count == 2:
            target, arguments = arguments[1], arguments[:1]
        else:
            break
    return target, arguments, None if kind(kwargs) == "dict" and not kwargs.size else kwargs


def call_problem(target: Any, arguments: Any, kwargs: Any) -> str | None:
    """Why no pickler writes this call (None: they may)."""
    name = target.name if isinstance(target, Global) else ""
    if name in _NOT_CALLED:
        return f"{name} called (numpy rebuilds it through its own helpers)"
    if name not in ARGUMENT_KINDS:
        return None
    if not isinstance(arguments, tuple) or kwargs is not None:
        return f"{name} called with computed or keyword arguments"
    position, kinds = ARGUMENT_KINDS[name]
    if len(arguments) > position and kind(arguments[position]) not in kinds:
        return f"{name} called with argument {position} of kind {kind(arguments[position])!r}"
    if name == "_codecs.encode" and arguments[1:] != ("latin1",):
        return f"{name} called with an encoding other than latin1"
    if name == _SCALAR and len(arguments) != 2:
        return f"{name} called without its data"
    if name == _RECONSTRUCT and not (len(arguments) > 1 and kind(arguments[1]) == "tuple"
                                     and 0 in arguments[1]):
        return f"{name} of a non-empty array (numpy writes shape (0,))"
    return None


def made_dtype(name: str, arguments: Any) -> Value:
    """The dtype a call makes, with its bytes per element if the stream states
    them: ``numpy.dtype`` of a plain type string (``"O8"``, ``"V24"``,
    ``"<f8"``), a StringDType."""
    value = Value("dtype")
    if name == f"{CORE}._internal._convert_to_stringdtype_kwargs":
        value.itemsize = _STRINGDTYPE_SIZE
    if name != "numpy.dtype" or not isinstance(arguments, tuple) or not arguments:
        return value
    value.fresh = arguments[2:3] == (True,)
    spec = arguments[0]
    if kind(spec) == "str" and _PLAIN_DTYPE.fullmatch(spec):
        try:
            value.itemsize = np.dtype(spec).itemsize
        except (TypeError, ValueError):
            pass
    return value


def mark_used(values: Any) -> None:
    """Note that an opcode took these stack values (a dtype must be built before)."""
    for value in values:
        if isinstance(value, Value):
            value.used = True


def dtype_build_problem(dtype: Value) -> str | None:
    """Why no pickler writes this ``BUILD`` of a dtype (None: they may). numpy
    writes it once, right after ``numpy.dtype(spec, align, True)`` made a copy;
    a ``BUILD`` later changes the layout of arrays made with the dtype, and one
    of a shared dtype (``copy=False``) changes numpy's own."""
    if not dtype.fresh:
        return "numpy.dtype built that is not a fresh copy"
    if dtype.built or dtype.used:
        return "numpy.dtype built again or after use"
    return None


def built_itemsize(itemsize: int | None, state: Any) -> int | None:
    """Bytes per element of a dtype after ``BUILD`` with ``state``
    ``(version, endian, subarray, names, fields, elsize, alignment, flags[, metadata])``:
    the largest of its type's, ``elsize`` and the subarray's; None if not stated."""
    if itemsize is None or kind(state) != "tuple" or len(state) < 6 or type(state[5]) is not int:
        return None
    size = max(itemsize, state[5])
    subarray = state[2]
    if subarray is None:
        return size
    if not (kind(subarray) == "tuple" and len(subarray) == 2 and isinstance(subarray[0], Value)
            and subarray[0].itemsize is not None and kind(subarray[1]) == "tuple"
            and all(type(n) is int and n >= 0 for n in subarray[1])):
        return None
    return max(size, subarray[0].itemsize * math.prod(subarray[1]))


def filled_bytes(state: Any) -> int:
    """Bytes numpy allocates for an array ``BUILD`` from a list (0 for bytes data,
    whose size numpy checks); call only when :func:`array_state_problem` is None."""
    if kind(state) != "tuple" or len(state) not in (4, 5) or kind(state[-1]) != "list":
        return 0
    return math.prod(state[-4]) * state[-3].itemsize


def array_state_problem(state: Any) -> str | None:
    """Why no pickler writes this ``BUILD`` state for an array (None: they may)."""
    if kind(state) != "tuple":
        return "numpy.ndarray state that is computed"
    if len(state) not in (4, 5) or kind(state[-1]) in ("str", "bytes"):
        return None  # numpy refuses other lengths, and data whose size does not match the shape
    shape, dtype, data = state[-4], state[-3], state[-1]
    if not (kind(data) == "list" and kind(shape) == "tuple" and all(type(n) is int for n in shape)
            and math.prod(shape) == data.size):
        return "numpy.ndarray state whose objects do not match its shape"
    if not isinstance(dtype, Value) or dtype.itemsize is None:
        return "numpy.ndarray filled from a list, of a dtype whose size the stream does not state"
    return None
