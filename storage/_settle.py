"""Put the real objects in place of a load's makers and pending objects.

While a stream runs, the unpickler holds what :mod:`luigi_checkpoint.storage._constructors`
made: makers standing for globals, and pending numpy objects that a ``BUILD``
may still validate. When the stream has ended and the result still refers to
any of them, :func:`settle` walks the result once and replaces each by its
real value: in lists, dicts (keys too), sets, deques, object arrays and the
attributes of instances of caller-trusted classes in place; tuples and
frozensets holding one are made again (once each, so shared ones stay shared).
The walk is iterative for containers; tuples nest at most as deep as a pickler
can write (Python's recursion limit), deeper ones are refused.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from ._constructors import Load, is_made, settled

__all__ = ["settle"]

_LEAVES = frozenset({int, float, str, bytes, bool, complex, type(None), bytearray, range, slice})


def settle(result: Any, load: Load) -> Any:
    """``result`` with every maker and pending object of ``load`` replaced.

    Raises
    ------
    CorruptPickleError
        A pending object that was never completed, or tuples nested too deep.
    """
    rebuilt: dict[int, Any] = {}  # id of a tuple or frozenset -> its settled form
    seen: set[int] = set()
    todo: list[Any] = []

    def fix(value: Any) -> Any:
        kind = type(value)
        if kind in _LEAVES:
            return value
        if is_made(value):
            value = settled(value)
            kind = type(value)
        if kind is tuple or kind is frozenset:
            key = id(value)
            if key not in rebuilt:
                rebuilt[key] = value  # a cycle back to it keeps the original
                try:
                    items = [fix(item) for item in value]
                except RecursionError:
                    raise load.corrupt("tuples nested deeper than a pickler writes") from None
                if any(new is not old for new, old in zip(items, value)):
                    rebuilt[key] = kind(items)
            return rebuilt[key]
        if id(value) not in seen:
            seen.add(id(value))
            todo.append(value)
        return value

    root = fix(result)
    while todo:
        _fix_inside(todo.pop(), fix, load)
    return root


def _fix_inside(obj: Any, fix: Any, load: Load) -> None:
    kind = type(obj)
    if kind is list or kind is collections.deque:
        _fix_items(obj, enumerate(obj), fix)
    elif isinstance(obj, dict):
        changed = [(key, value, fix(key), fix(value)) for key, value in obj.items()
                   if type(key) not in _LEAVES or type(value) not in _LEAVES]
        if any(new_key is not key for key, _, new_key, _ in changed):
            items = [(fix(key), fix(value)) for key, value in obj.items()]
            obj.clear()  # a key replaced: make the dict again, in its order
            for key, value in items:
                obj[key] = value
        else:
            for key, value, _, new_value in changed:
                if new_value is not value:
                    obj[key] = new_value
    elif kind is set:
        items = [fix(item) for item in obj]
        obj.clear()
        obj.update(items)
    elif kind is np.ndarray and obj.dtype == object:
        _fix_items(obj, ((index, obj[index]) for index in np.ndindex(obj.shape)), fix)
    if kind in load.trusted_types or (isinstance(obj, dict) and hasattr(obj, "__dict__")):
        attributes = getattr(obj, "__dict__", None)
        if attributes is not None:
            _fix_inside(attributes, fix, load)
        for klass in kind.__mro__:
            for slot in klass.__dict__.get("__slots__", ()):
                if isinstance(slot, str) and slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    value = getattr(obj, slot)
                    new = fix(value)
                    if new is not value:
                        setattr(obj, slot, new)


def _fix_items(target: Any, items: Any, fix: Any) -> None:
    if type(target) is list and _LEAVES.issuperset(map(type, target)):
        return  # nothing but leaves (counted at C speed)
    for index, item in items:
        if type(item) not in _LEAVES:
            new = fix(item)
            if new is not item:
                target[index] = new
