"""One pickle vocabulary for every supported numpy: written once, read anywhere.

numpy pickles some of its objects with names or arguments that other numpy
versions lack. Measured with plain ``pickle`` between numpy 1.23 (Theano
1.0.5's), 1.24 (the oldest ``pyproject.toml`` allows), 1.25, 1.26 and 2.0-2.4:

- object arrays and scalars: numpy 2 names ``numpy._core.multiarray._reconstruct``
  and ``.scalar``; 1.24 and 1.25 have no ``numpy._core``. Every version imports
  ``numpy.core.multiarray`` (numpy 2 keeps these two there for old pickles,
  without a warning).
- record dtypes: numpy 2 pickles an aligned one's flags as ``144`` (2.5 adds
  0x100 to records with gaps), which numpy 1 refuses (a signed byte); numpy 1
  writes ``-112``, which numpy 2 reads as 16 (the aligned-struct flag dropped).
- datetime dtypes: numpy 2.4 pickles their metadata as ``None``, from which
  every earlier version builds a dtype whose ``.metadata`` raises TypeError
  (``numpy.save`` of its arrays too); the others write ``{}``.
- scalar types: ``numpy.bool`` (2.x) is ``numpy.bool_`` (1.x, and 2.x too);
  ``numpy.float128`` (1.23-1.25) is ``numpy.longdouble`` (all).
- Generator, bit generator, RandomState: numpy 2 calls ``__generator_ctor`` and
  ``__randomstate_ctor`` with the bit generator itself, ``__bit_generator_ctor``
  with its class, and builds a bit generator from ``(state, seed sequence)``;
  1.24-1.26 pass ``(name, __bit_generator_ctor)``; 1.23 takes ``(name)`` only
  and a state dict. numpy 2 still reads the name and the dict.

Writing, every numpy writes the forms all of them read: :func:`reduction`
gives a Generator, bit generator or RandomState as its bit generator's name
and state dict, and a dtype its flags as a signed byte and a datetime's
metadata as ``{}``;
:func:`global_name` spells the globals above by names every version imports.
Not kept: numpy 2's seed sequence inside a bit generator (``spawn`` after a
load draws fresh entropy, as it always did with numpy 1 pickles), and a bit
generator shared by two objects comes back as two copies.

Reading, what any version wrote: :func:`read_name` maps ``numpy.core`` and
``numpy._core`` and the scalar type names to the running numpy's spelling; the
loader's own constructors take every version's arguments and states
(:mod:`luigi_checkpoint.storage._numpy_constructors`,
:mod:`luigi_checkpoint.storage._random_constructors`).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from numpy.random import _pickle as _random_pickle

__all__ = ["BIT_GENERATORS", "CORE", "NUMPY2", "global_name", "read_name", "reduction"]

NUMPY2 = int(np.__version__.split(".")[0]) >= 2
CORE = "numpy._core" if NUMPY2 else "numpy.core"
"""The running numpy's name for its core package."""
_OTHER_CORE = "numpy.core" if NUMPY2 else "numpy._core"
_multiarray = importlib.import_module(f"{CORE}.multiarray")

BIT_GENERATORS = {cls.__name__: cls for cls in (
    np.random.MT19937, np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64)}
"""numpy's bit generators, by the name every version's pickling helpers take."""
_GENERATOR_CTOR = getattr(_random_pickle, "__generator_ctor")
_BIT_GENERATOR_CTOR = getattr(_random_pickle, "__bit_generator_ctor")
_RANDOMSTATE_CTOR = getattr(_random_pickle, "__randomstate_ctor")

_WRITTEN_NAMES: dict[Any, tuple[str, str]] = {
    _multiarray._reconstruct: ("numpy.core.multiarray", "_reconstruct"),
    _multiarray.scalar: ("numpy.core.multiarray", "scalar"),
    np.bool_: ("numpy", "bool_"),
    np.longdouble: ("numpy", "longdouble"),
    np.clongdouble: ("numpy", "clongdouble"),
}
"""numpy globals whose own spelling some supported version cannot import."""

_SCALAR_TYPES = {
    "bool": np.bool_, "bool_": np.bool_, "longdouble": np.longdouble,
    "clongdouble": np.clongdouble, f"float{8 * np.dtype(np.longdouble).itemsize}": np.longdouble,
    f"complex{8 * np.dtype(np.clongdouble).itemsize}": np.clongdouble,
}
"""Every name a numpy scalar type has had in some version (``numpy.<name>``) -> the type."""

_ALIGNED_STRUCT = 0x80
"""The highest dtype flag numpy 1 knows, its sign bit when pickled. numpy 2.5
adds ``NPY_NOT_TRIVIALLY_COPYABLE`` (0x100), a copying hint numpy 1 cannot
hold and not written here: without it numpy 2.5 copies whole items, as it does
for records it builds from a list."""


# ------------------------------------------------------------------ writing


def reduction(obj: Any) -> tuple[Any, ...] | None:
    """``obj``'s reduce value in the form every supported numpy reads, for
    numpy's random generators and the dtypes numpy 2 pickles otherwise; None
    for anything else (its own reduction is read everywhere, names aside)."""
    kind = type(obj)
    if kind is np.random.Generator and type(obj.bit_generator) in BIT_GENERATORS.values():
        state = obj.bit_generator.state
        return _GENERATOR_CTOR, (state["bit_generator"],), state
    if kind in BIT_GENERATORS.values():
        state = obj.state
        return _BIT_GENERATOR_CTOR, (state["bit_generator"],), state
    if kind is np.random.RandomState:
        state = obj.get_state(legacy=False)
        if state["bit_generator"] in BIT_GENERATORS:
            return _RANDOMSTATE_CTOR, (state["bit_generator"],), state
        return None
    if isinstance(obj, np.dtype):
        reduced = obj.__reduce__()
        if len(reduced) == 3:
            state = _dtype_state(reduced[2], signed_flags=True, none_metadata=False)
            if state is not reduced[2]:
                return reduced[0], reduced[1], state
    return None


def _dtype_state(state: Any, *, signed_flags: bool, none_metadata: bool) -> Any:
    """A dtype's state ``(version, endian, subarray, names, fields, elsize,
    alignment, flags[, metadata])`` with its flags a signed byte (numpy 1) or
    not (numpy 2), and a datetime's metadata ``{}`` unless ``None`` is
    allowed; the same object if nothing changes."""
    if type(state) is not tuple or len(state) < 8 or type(state[7]) is not int:
        return state
    flags = state[7]
    if signed_flags and not -0x80 <= flags < 0x80:
        flags = (flags & 0xFF) - (0x100 if flags & _ALIGNED_STRUCT else 0)  # numpy 1's byte
    elif not signed_flags and -0x80 <= flags < 0:
        flags += 0x100
    datetime = state[8] if state[0] == 4 and len(state) == 9 else None
    no_metadata = (not none_metadata and type(datetime) is tuple and len(datetime) == 2
                   and datetime[0] is None)
    if flags == state[7] and not no_metadata:
        return state
    return (*state[:7], flags, *((({}, datetime[1]),) if no_metadata else state[8:]))


def global_name(obj: Any) -> tuple[str, str] | None:
    """``(module, name)`` under which every supported numpy imports the
    global ``obj``, where numpy's own spelling is not one; else None."""
    try:
        return _WRITTEN_NAMES.get(obj)
    except TypeError:  # unhashable: not one of them
        return None


# ------------------------------------------------------------------ reading


def read_name(module: str, name: str) -> tuple[str, str]:
    """The running numpy's spelling of a numpy global that a pickle names."""
    if module == _OTHER_CORE or module.startswith(_OTHER_CORE + "."):
        return CORE + module[len(_OTHER_CORE):], name
    if module == "numpy" and name in _SCALAR_TYPES:
        return module, _SCALAR_TYPES[name].__name__
    return module, name
