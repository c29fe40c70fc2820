"""Our constructors for numpy's dtypes, arrays and scalars in a pickle stream.

numpy pickles a dtype as ``numpy.dtype(spec, align, copy)`` plus a ``BUILD``
whose state ``(version, endian, subarray, names, fields, elsize, alignment,
flags[, metadata])`` sets its layout, and an in-stream array as
``_reconstruct(ndarray, (0,), b"b")`` plus a ``BUILD`` of ``(version, shape,
dtype, is_fortran, data)``. numpy's ``__setstate__`` takes such states as they
come: a forged record layout or an object array over a short list makes numpy
read and write outside its buffers. Here both are :class:`Pending` objects whose
``BUILD`` checks every field of the state and then makes the real object with
numpy's *validating* public constructors (``numpy.dtype`` of a description,
``frombuffer``), never with ``__setstate__``:

- a dtype is built once, before anything uses it; its layout is what
  ``numpy.dtype({"names", "formats", "offsets", "itemsize"}, align)`` makes of
  the state, and the state's size, alignment and flags must agree with it;
- an array's shape, dtype and data must agree (bytes: exactly the array's
  size; a list: exactly one object per element, for dtypes holding objects),
  and what it allocates is charged to the load's budget;
- ``scalar(dtype, data)`` needs exactly the dtype's bytes; ``_frombuffer`` the
  array's; numpy types are values, never called.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ._constructors import Load, Pending, Placeholder, Rule, brief, holds_placeholder, rule_of, settled
from ._numpy_compat import CORE, NUMPY2
from ._settle import settle

__all__ = ["NUMPY_RULES", "as_array", "as_dtype"]

_ALIGNED_STRUCT = 0x80
_PLAIN_SPEC = re.compile(r"[<>|=]?[A-Za-z?]\d*")
_UNITS = {"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic"}
_MAX_DIMS = 64
_MAX_ITEMSIZE = 2**31 - 1


def _int(load: Load, value: Any, low: int, high: int, what: str) -> int:
    if type(value) not in (int, bool) or not low <= value <= high:
        raise load.corrupt(f"{what} {brief(value)} is not an integer in [{low}, {high}]")
    return int(value)


def _shape(load: Load, value: Any, what: str) -> tuple[int, ...]:
    if type(value) is int:
        value = (value,)
    if type(value) is not tuple or len(value) > _MAX_DIMS:
        raise load.corrupt(f"{what} is not a tuple of at most {_MAX_DIMS} dimensions")
    return tuple(_int(load, n, 0, 2**62, f"{what} dimension") for n in value)


def as_dtype(load: Load, value: Any, what: str) -> np.dtype[Any]:
    """The dtype of a :class:`DtypeProxy` the stream made (marking it used)."""
    if not isinstance(value, DtypeProxy):
        raise load.corrupt(f"{what} is a {type(value).__name__}, not a dtype the stream made")
    return value.value()


def as_array(load: Load, value: Any, dtype: np.dtype[Any], shape: tuple[int, ...], what: str) -> np.ndarray:
    """An array of exactly ``dtype`` and ``shape``: from a member or made in the stream."""
    if isinstance(value, ArrayProxy):
        value = value.value()
    if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
        found = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        raise load.corrupt(f"{what} is {found}, not {dtype}{list(shape)}")
    return value


class DtypeProxy(Pending):
    """A dtype of the stream: ``numpy.dtype(spec)``, then at most one ``BUILD``."""

    __slots__ = ("_dtype", "_built", "_used")

    def __init__(self, load: Load, dtype: np.dtype[Any], built: bool = False) -> None:
        super().__init__(load)
        self._dtype, self._built, self._used = dtype, built, False

    def __setstate__(self, state: Any) -> None:
        if self._built or self._used:
            raise self.load.corrupt(f"dtype {self._dtype} built again or after use (numpy "
                                    "builds a dtype once, before anything uses it)")
        self._built = True
        if holds_placeholder(state):
            self._dtype = Placeholder()
        else:
            self._dtype = _dtype_from_state(self.load, self._dtype, state)

    def value(self) -> Any:
        self._used = True
        return self._dtype


def _dtype_from_state(load: Load, base: np.dtype[Any], state: Any) -> np.dtype[Any]:
    """The dtype ``state`` describes, made by numpy's constructor (see the module)."""
    if type(state) is not tuple or len(state) not in (8, 9):
        raise load.corrupt(f"dtype state is not a tuple of 8 or 9 items: {type(state).__name__}")
    version, endian, subarray, names, fields, elsize, alignment, flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    _int(load, version, 3, 4, "dtype state version")
    if endian not in ("<", ">", "|", "="):
        raise load.corrupt(f"dtype byte order {brief(endian)}")
    elsize = _int(load, elsize, -1, _MAX_ITEMSIZE, "dtype item size")
    alignment = _int(load, alignment, -1, 64, "dtype alignment")
    flags = _int(load, flags, -0x80, 0xFFFF, "dtype flags") & 0xFF  # numpy 1 writes a signed byte
    if subarray is not None:
        if type(subarray) is not tuple or len(subarray) != 2 or names is not None:
            raise load.corrupt("dtype subarray is not (dtype, shape)")
        shape = _shape(load, subarray[1], "dtype subarray shape")
        made = np.dtype((as_dtype(load, subarray[0], "dtype subarray base"), shape))
    elif names is not None:
        made = _record(load, names, fields, elsize, bool(flags & _ALIGNED_STRUCT))
    else:
        if fields is not None:
            raise load.corrupt("dtype with fields but no names")
        made = _plain(load, base, endian, metadata)
    if base.kind not in "mM" and metadata is not None:
        if type(metadata) is not dict:
            raise load.corrupt(f"dtype metadata of type {type(metadata).__name__}")
        made = np.dtype(made, metadata={key: settled(value) for key, value in metadata.items()})
    for what, stated, actual in (("item size", elsize, made.itemsize),
                                 ("alignment", alignment, made.alignment),
                                 ("flags", flags, made.flags & 0xFF)):
        if stated != actual and not (stated == -1 and what != "flags" and names is None
                                     and subarray is None):
            raise load.corrupt(f"dtype {made} stated with {what} {stated}; numpy makes {actual} "
                               "(a forged layout)")
    return made


def _plain(load: Load, base: np.dtype[Any], endian: str, metadata: Any) -> np.dtype[Any]:
    made = base
    if base.kind in "mM":
        unit = metadata[1] if type(metadata) is tuple and len(metadata) == 2 else None
        if type(unit) is not tuple or len(unit) != 4:
            raise load.corrupt(f"datetime dtype without its unit: {brief(metadata)}")
        name, count, denominator, events = unit
        name = name.decode("latin1") if isinstance(name, bytes) else name
        if name not in _UNITS or (denominator, events) != (1, 1):
            raise load.corrupt(f"datetime unit {brief(unit)}")
        count = _int(load, count, 1, 2**31 - 1, "datetime unit count")
        made = np.dtype(f"{base.char}8" if name == "generic" else f"{base.char}8[{count}{name}]")
    if endian in "<>" and made.byteorder != "|":
        made = made.newbyteorder(endian)
    return made


def _record(load: Load, names: Any, fields: Any, elsize: int, aligned: bool) -> np.dtype[Any]:
    if type(names) is not tuple or not all(type(n) is str for n in names) or type(fields) is not dict:
        raise load.corrupt("dtype names are not a tuple of strings with a dict of fields")
    formats, offsets, titles = [], [], []
    for name in names:
        entry = fields.get(name)
        if type(entry) is not tuple or len(entry) not in (2, 3):
            raise load.corrupt(f"dtype field {brief(name)} is not (dtype, offset[, title])")
        formats.append(as_dtype(load, entry[0], f"dtype field {brief(name)}"))
        offsets.append(_int(load, entry[1], 0, _MAX_ITEMSIZE, f"dtype field {brief(name)} offset"))
        title = entry[2] if len(entry) == 3 else None
        if title is not None and (type(title) is not str or fields.get(title) is not entry):
            raise load.corrupt(f"dtype field {brief(name)} has a title {brief(title)} that is not a field")
        titles.append(title)
    if len(fields) != len(names) + sum(title is not None for title in titles):
        raise load.corrupt("dtype fields that no name lists")
    spec: dict[str, Any] = {"names": list(names), "formats": formats, "offsets": offsets,
                            "itemsize": elsize}
    if any(title is not None for title in titles):
        spec["titles"] = titles
    return np.dtype(spec, align=aligned)


def _dtype(load: Load, spec: Any, align: Any = False, copy: Any = False) -> DtypeProxy:
    """``numpy.dtype(spec, align, copy)``: always a fresh copy, so a ``BUILD``
    never changes numpy's own."""
    _int(load, align, 0, 1, "numpy.dtype align")
    _int(load, copy, 0, 1, "numpy.dtype copy")
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if type(spec) is str and _PLAIN_SPEC.fullmatch(spec):
        return DtypeProxy(load, np.dtype(spec, bool(align), True))
    if isinstance(spec, DtypeProxy):
        return DtypeProxy(load, np.dtype(as_dtype(load, spec, "numpy.dtype"), bool(align), True))
    kind = settled(spec)
    if isinstance(kind, type) and kind in _TYPE_SPECS:
        return DtypeProxy(load, np.dtype(kind, bool(align), True))
    raise load.corrupt(f"numpy.dtype of {brief(spec)}")


_TYPE_SPECS = {int, float, complex, bool, object, str, bytes, *np.sctypeDict.values()}


def _stringdtype(load: Load, coerce: Any = True, *rest: Any) -> DtypeProxy:
    """numpy 2's ``_convert_to_stringdtype_kwargs(coerce[, na_object])``."""
    _int(load, coerce, 0, 1, "StringDType coerce")
    if len(rest) > 1 or (rest and not isinstance(rest[0], (str, float, type(None)))):
        raise load.corrupt("StringDType with an na_object that is not a string, float or None")
    maker = getattr(np.dtypes, "StringDType")
    return DtypeProxy(load, np.dtype(maker(coerce=bool(coerce), **({"na_object": rest[0]} if rest else {}))),
                      built=True)


class ArrayProxy(Pending):
    """An array of the stream: ``_reconstruct(ndarray, (0,), b"b")``, then one ``BUILD``."""

    __slots__ = ("_array", "_subtype")

    def __init__(self, load: Load, subtype: type = np.ndarray) -> None:
        super().__init__(load)
        self._array: Any = None
        self._subtype = subtype

    def __setstate__(self, state: Any) -> None:
        if self._array is not None:
            raise self.load.corrupt("numpy.ndarray built twice")
        if holds_placeholder(state, 1):
            self._array = Placeholder()
            return
        array = _array_from_state(self.load, state)
        self._array = array if self._subtype is np.ndarray else array.view(self._subtype)

    def value(self) -> Any:
        if self._array is None:
            raise self.load.corrupt("numpy.ndarray made but never filled")
        return self._array


def _array_from_state(load: Load, state: Any) -> np.ndarray:
    if type(state) is not tuple or len(state) not in (4, 5):
        raise load.corrupt("numpy.ndarray state is not (version, shape, dtype, is_fortran, data)")
    if len(state) == 5:
        _int(load, state[0], 0, 1, "numpy.ndarray state version")
    shape = _shape(load, state[-4], "numpy.ndarray shape")
    dtype = as_dtype(load, state[-3], "numpy.ndarray dtype")
    order = "F" if _int(load, state[-2], 0, 1, "numpy.ndarray is_fortran") else "C"
    data = state[-1]
    count = math.prod(shape)
    load.charge(count * max(dtype.itemsize, 1), "numpy.ndarray")
    if isinstance(data, str):  # Python 2's str, read as latin-1
        data = data.encode("latin1")
    if isinstance(data, (bytes, bytearray)) and not dtype.hasobject:
        if len(data) != count * dtype.itemsize:
            raise load.corrupt(f"numpy.ndarray of {count} x {dtype} from {len(data)} bytes")
        if dtype.itemsize == 0:
            return np.empty(shape, dtype, order=order)
        return np.frombuffer(data, dtype).reshape(shape, order=order).copy(order=order)
    if type(data) is list and dtype.hasobject:
        if len(data) != count:
            raise load.corrupt(f"numpy.ndarray of {count} objects from a list of {len(data)}")
        array = np.ndarray.__new__(np.ndarray, (0,), "b")
        # every part checked above; its objects made real first (numpy unpacks arrays among them)
        array.__setstate__((1, shape, dtype, order == "F", settle(data, load)))
        return array
    raise load.corrupt(f"numpy.ndarray of {dtype} from a {type(data).__name__}")


def _reconstruct(load: Load, subtype: Any, shape: Any, spec: Any) -> ArrayProxy:
    """An array of ``ndarray`` or of a caller-trusted subclass that keeps ndarray's state."""
    kind, rule = settled(subtype), rule_of(subtype)
    subclass = (rule is not None and rule.caller_trusted and isinstance(kind, type)
                and issubclass(kind, np.ndarray) and kind.__setstate__ is np.ndarray.__setstate__)
    if (kind is not np.ndarray and not subclass) or shape != (0,) or spec not in (b"b", "b"):
        raise load.corrupt(f"_reconstruct({brief(subtype)}, {brief(shape)}, {brief(spec)}) (numpy writes "
                           "_reconstruct(ndarray or a trusted subclass keeping its state, (0,), b'b'))")
    return ArrayProxy(load, kind)


def _scalar(load: Load, dtype: Any, data: Any = None) -> Any:
    made = as_dtype(load, dtype, "numpy scalar dtype")
    if made.hasobject:
        if made != np.dtype(object):
            raise load.corrupt(f"numpy scalar of a record {made} holding objects")
        return data
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != made.itemsize:
        raise load.corrupt(f"numpy scalar of {made} from {type(data).__name__} "
                           f"of {len(data) if isinstance(data, bytes) else '?'} bytes")
    return _SCALAR(made, data)


def _frombuffer(load: Load, buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    made = as_dtype(load, dtype, "_frombuffer dtype")
    shape = _shape(load, shape, "_frombuffer shape")
    if not isinstance(buffer, (bytes, bytearray)) or made.hasobject or order not in ("C", "F", "A", "K"):
        raise load.corrupt(f"_frombuffer of a {type(buffer).__name__} as {made}, order {brief(order)}")
    if len(buffer) != math.prod(shape) * made.itemsize or made.itemsize == 0:
        raise load.corrupt(f"_frombuffer of {len(buffer)} bytes as {made}{list(shape)}")
    load.charge(len(buffer), "_frombuffer")
    return np.frombuffer(buffer, made).reshape(shape, order=order)


_multiarray = __import__(f"{CORE}.multiarray", fromlist=["scalar"])
_SCALAR = _multiarray.scalar
_NUMPY_TYPES = {*np.sctypeDict.values(), *(type(np.dtype(c)) for c in np.typecodes["All"])}

NUMPY_RULES: dict[str, Rule] = {
    "numpy.dtype": Rule(np.dtype, _dtype),
    "numpy.ndarray": Rule(np.ndarray),
    f"{CORE}.multiarray._reconstruct": Rule(_multiarray._reconstruct, _reconstruct),
    f"{CORE}.multiarray.scalar": Rule(_SCALAR, _scalar),
    f"{CORE}.numeric._frombuffer": Rule(getattr(np, "_core" if NUMPY2 else "core").numeric._frombuffer,
                                        _frombuffer),
    **{f"{t.__module__}.{t.__qualname__}": Rule(t) for t in _NUMPY_TYPES},
}
if NUMPY2:
    NUMPY_RULES[f"{CORE}._internal._convert_to_stringdtype_kwargs"] = Rule(
        np._core._internal._convert_to_stringdtype_kwargs, _stringdtype)
