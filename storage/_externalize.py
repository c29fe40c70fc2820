"""Pickling with every numpy and framework array moved out of the pickle, and named.

:func:`freeze` pickles an object with a pickler whose ``persistent_id``
replaces each plain ``np.ndarray`` / ``np.memmap`` (without object dtype) by
the text ``ndarray.<name>``, and each torch tensor, parameter and generator
and JAX array and key by ``torch.<name>`` or ``jax.<name>``
(:mod:`luigi_checkpoint.storage._frameworks`); the arrays
themselves are returned alongside, in the order the pickler met them, to be
written as NPY members, with the manifest fields of framework members.

Names say where an array sits (``model/W``, ``optimizer/velocity/0``,
``rng/state/key``). Before pickling, the object is walked the way the pickler
will walk it: dicts (by str/int key), lists and tuples (by index), and every
other object through the value its ``__reduce_ex__`` returns (so dataclasses,
``__dict__``, ``__slots__``, ``__getstate__`` and numpy random generators are
all seen). Those reduce values are handed to the pickler again through
``reducer_override``, so each object is reduced once and the arrays it
produces (a bit generator's state) are the very ones the walk named. A name
taken already gets a suffix (``_2``, ``_3``... in the order the walk meets
them); arrays the walk does not reach are ``array_<n>``. The pickler looks
up the persistent id the walk made for each array: it does no naming work
per array.

Whatever numpy version runs, the pickle names numpy's objects in the forms
every supported numpy reads (:mod:`luigi_checkpoint.storage._numpy_compat`):
the same ``reducer_override`` gives numpy's random generators and aligned
dtypes their portable reduction, and ``save_global`` spells numpy globals by
names all versions import. That hook exists only in pickle's Python pickler,
about ten times slower per object than the C pickler: the C pickler runs
first, and an object that holds such a global (a numpy scalar, an object
array) is pickled again by the Python one.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import re
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _frameworks as frameworks
from . import _numpy_compat as numpy_compat
from ._gcpause import paused

__all__ = ["Frozen", "externalizable", "freeze"]

RESERVED = frozenset({"pkl", "manifest.json"})
MAX_NAME = 200
_PLAIN = "ndarray."  # persistent ids of plain arrays: this, then the member name
_ODD = re.compile(r"[^A-Za-z0-9_\-]+")
_LEAVES = (
    type(None), bool, int, float, complex, str, bytes, bytearray, type, range, slice,
    types.FunctionType, types.BuiltinFunctionType, types.ModuleType, np.generic, np.dtype,
)

_PICKLED_BY_TYPE = frozenset({type(None), bool, int, float, complex, str, bytes, tuple, list, dict})
"""Types pickle writes by its own opcodes (never reduced, so nothing to override)."""


def externalizable(obj: object) -> bool:
    """Whether ``obj`` becomes an NPY member (exactly ndarray/memmap, no objects)."""
    return (type(obj) is np.ndarray or type(obj) is np.memmap) and not obj.dtype.hasobject


@dataclass(frozen=True)
class Frozen:
    """A pickled object and its externalized arrays, ready to be written.

    ``arrays`` are ``(member name, array)`` pairs in pickling order;
    ``entries`` holds, by member name, the manifest fields of framework
    members (what the array was: framework, type, dtype...).
    """

    pickle: bytes
    arrays: tuple[tuple[str, np.ndarray], ...]
    protocol: int
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)


def freeze(
    obj: Any,
    *,
    protocol: int = pickle.HIGHEST_PROTOCOL,
    copy: bool = True,
    reuse: Frozen | None = None,
) -> Frozen:
    """Pickle ``obj`` now, arrays externalized and named.

    With ``copy=True`` every externalized array is copied, so the caller may
    change the object right away (asynchronous saves); with ``copy=False``
    the arrays are the object's own and must not change until written.
    ``reuse`` is an earlier :class:`Frozen` copy that is no longer needed:
    arrays of the same name, shape and dtype are copied into its buffers,
    which are already in memory (no allocation, no page faults).
    Pickling errors propagate unchanged.
    """
    with paused():  # a few objects per array, no cycles
        try:
            buffer, pickler = _pickled(obj, protocol, _FastPickler)
        except _NeedsPortableNames:
            buffer, pickler = _pickled(obj, protocol, _PortablePickler)
    arrays = pickler.arrays
    if copy:
        spare = dict(reuse.arrays) if reuse is not None else {}
        arrays = [(name, _copy(array, spare.get(name))) for name, array in arrays]
    return Frozen(buffer.getvalue(), tuple(arrays), protocol, pickler.entries)


def _pickled(obj: Any, protocol: int, kind: type[_FastPickler | _PortablePickler]) -> tuple[io.BytesIO, _Externalizing]:
    """``obj`` walked, then pickled by a pickler of ``kind`` (which uses up the walk's names)."""
    walk = _Walk(protocol, frameworks.framework_types())
    walk.run(obj)
    buffer = io.BytesIO()
    pickler = kind(buffer, protocol, walk)
    pickler.dump(obj)
    return buffer, pickler


def _copy(array: np.ndarray, spare: np.ndarray | None) -> np.ndarray:
    if spare is None or spare.shape != array.shape or spare.dtype != array.dtype:
        return np.array(array, order="K", copy=True)
    np.copyto(spare, array, casting="no")
    return spare


def _component(key: object) -> str | None:
    if type(key) is str and key.isascii() and key.isalnum():  # the usual key: nothing to replace
        return key
    if isinstance(key, (str, int)):
        return _ODD.sub("_", str(key)) or "_"
    return None


class _Walk:
    """Depth-first walk naming arrays by their paths and caching reduce values.

    Each array met on a path gets a unique member name, in the order the walk
    meets them: ``pids`` holds the persistent id of each plain array and
    ``names`` the name of each framework object, by id. Names made later
    (``array_<n>``) come from :meth:`unique` too.
    """

    def __init__(self, protocol: int, framework_types: dict[type, str]) -> None:
        self.protocol = protocol
        self.framework_types = framework_types
        self.pids: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.reductions: dict[int, tuple[Any, ...]] = {}
        self._alive: dict[int, object] = {}  # keeps ids unique while names are in use
        self._used: set[str] = set(RESERVED)

    def run(self, root: object) -> None:
        stack: list[tuple[object, str]] = [(root, "")]
        alive, pids, framework_types = self._alive, self.pids, self.framework_types
        while stack:  # runs once per object of the state: kept lean
            obj, path = stack.pop()
            key = id(obj)
            if key in alive:
                continue
            if externalizable(obj):
                alive[key] = obj
                if path:
                    pids[key] = _PLAIN + self.unique(path)
                continue
            if type(obj) in framework_types:
                alive[key] = obj
                if path:
                    self.names[key] = self.unique(path)
                continue
            if isinstance(obj, _LEAVES):
                continue
            alive[key] = obj
            stack.extend(reversed(self._children(obj, path)))

    def _children(self, obj: object, path: str) -> list[tuple[object, str]]:
        """The objects ``obj`` holds, each with its path (``/``-separated components)."""
        base = f"{path}/" if path else ""
        if type(obj) is dict:
            return _items(obj.items(), base)
        if type(obj) in (list, tuple):
            return [(item, f"{base}{i}") for i, item in enumerate(obj)]  # type: ignore[arg-type]
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            return []
        reduced = self._reduce(obj)
        if reduced is None:
            return []
        children = [(arg, path) for arg in reduced[1]]
        state = reduced[2] if len(reduced) > 2 else None
        for part in state if type(state) is tuple else (state,):
            children += _items(part.items(), base) if type(part) is dict else [(part, path)]
        if len(reduced) > 3 and reduced[3] is not None:
            children += [(item, f"{base}{i}") for i, item in enumerate(reduced[3])]
        if len(reduced) > 4 and reduced[4] is not None:
            children += _items(reduced[4], base)
        return children

    def _reduce(self, obj: object) -> tuple[Any, ...] | None:
        reducer = copyreg.dispatch_table.get(type(obj))
        try:
            value = numpy_compat.reduction(obj)
            if value is None:
                value = reducer(obj) if reducer else obj.__reduce_ex__(self.protocol)
        except Exception:  # the pickler will meet it again and report it
            return None
        if not isinstance(value, tuple) or len(value) < 2 or not isinstance(value[1], tuple):
            return None
        value = tuple(
            list(part) if i in (3, 4) and part is not None else part
            for i, part in enumerate(value)
        )
        self.reductions[id(obj)] = value
        return value

    def unique(self, name: str) -> str:
        """``name`` (shortened to :data:`MAX_NAME`), or with a suffix ``_<n>`` if taken."""
        if len(name) > MAX_NAME:
            name = name[:MAX_NAME].rstrip("/")
        candidate, n = name, 1
        while candidate in self._used:
            n += 1
            candidate = f"{name}_{n}"
        self._used.add(candidate)
        return candidate

    def reduction(self, obj: object) -> tuple[Any, ...] | Any:
        value = self.reductions.get(id(obj))
        if value is None or self._alive.get(id(obj)) is not obj:
            return NotImplemented
        return tuple(
            iter(part) if i in (3, 4) and part is not None else part
            for i, part in enumerate(value)
        )


def _items(pairs: Any, base: str) -> list[tuple[object, str]]:
    return [(value, base + part) for key, value in pairs if (part := _component(key)) is not None]


class _NeedsPortableNames(Exception):
    """The object holds a numpy global that only :class:`_PortablePickler` spells portably."""


class _Externalizing:
    """Replaces externalizable arrays by ``ndarray.<name>`` persistent ids (and
    framework arrays by ``<framework>.<name>``) and reduces objects once (the
    walk's reductions), numpy's in the forms every supported numpy reads.
    Mixed into a pickler class."""

    def __init__(self, file: io.BytesIO, protocol: int, walk: _Walk) -> None:
        super().__init__(file, protocol=protocol)  # type: ignore[call-arg]
        self._walk = walk
        self._ids: dict[int, str] = {}  # id of each object made a member -> its persistent id
        self.arrays: list[tuple[str, np.ndarray]] = []
        self.entries: dict[str, dict[str, Any]] = {}
        self._kept: list[object] = []  # framework objects met: keeps their ids from being reused

    def persistent_id(self, obj: Any) -> str | None:
        if type(obj) in _PICKLED_BY_TYPE:  # called for every object: keys, numbers...
            return None
        key = id(obj)  # the objects of these ids are kept alive
        pid = self._ids.get(key)
        if pid is None:
            pid = self._walk.pids.pop(key, None)
            if pid is None:
                return self._member(obj)
            self.arrays.append((pid[len(_PLAIN) :], obj))  # a plain array the walk named, met first
            self._ids[key] = pid
        return pid

    def _member(self, obj: Any) -> str | None:
        """The persistent id of a framework object or of an array the walk did
        not name, met for the first time (None for any other object)."""
        framework = self._walk.framework_types.get(type(obj))
        if framework is None and not externalizable(obj):
            return None
        name = self._walk.names.get(id(obj)) or self._walk.unique(f"array_{len(self.arrays)}")
        if framework is not None:
            member = frameworks.as_member(obj, framework)
            pid = f"{member.kind}.{name}"
            self.arrays.append((name, member.array))
            self.entries[name] = member.entry
            self._kept.append(obj)
        else:
            pid = _PLAIN + name
            self.arrays.append((name, obj))  # also keeps the id from being reused
        self._ids[id(obj)] = pid
        return pid

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _PICKLED_BY_TYPE:
            return NotImplemented
        value = self._walk.reduction(obj)
        if value is NotImplemented:
            value = numpy_compat.reduction(obj) or NotImplemented
        return value


class _FastPickler(_Externalizing, pickle.Pickler):
    """The C pickler: most states (arrays in containers and objects) hold no
    numpy global that needs another spelling; one that does stops it."""

    def reducer_override(self, obj: Any) -> Any:
        if numpy_compat.global_name(obj) is not None:
            raise _NeedsPortableNames
        return super().reducer_override(obj)


class _PortablePickler(_Externalizing, pickle._Pickler):  # type: ignore[misc,name-defined]
    """pickle's Python pickler, whose ``save_global`` writes numpy globals by
    names every supported numpy imports (numpy scalars, ``bool_``, object arrays)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        spelled = numpy_compat.global_name(obj)
        if spelled is None:
            super().save_global(obj, name)
            return
        module, qualname = spelled
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)
