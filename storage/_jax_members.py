"""JAX objects as members: arrays (``jax.Array``, copied to host) and typed
PRNG keys (``jax.random.key``).

An array's member holds its data, or its bits for the ``ml_dtypes`` dtypes
numpy lacks (bfloat16, float8, int4...), with the dtype and the device it was
on in the manifest; it loads with ``jax.numpy.asarray`` on JAX's default
device. A typed key's member holds its key data (``jax.random.key_data``),
the manifest its implementation (``threefry2x32``); it loads through
``jax.random.wrap_key_data``. Raw ``uint32`` keys (``PRNGKey``) are arrays.
Shardings are not kept: a sharded array loads whole on the default device.
"""

from __future__ import annotations

import functools
import re
from types import ModuleType
from typing import Any

import numpy as np

from ._member import NATIVE, Member, bits_dtype
from ._reading import Allocate
from .errors import UnsupportedArrayError

__all__ = ["TYPES", "allocator", "member", "problem", "rebuild", "types"]

TYPES = ("Array", "PRNGKey")
_KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_ML_DTYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")


@functools.cache
def _concrete(jax: ModuleType) -> tuple[type, type]:
    """The classes of JAX arrays and of typed keys (private in JAX: found by making one)."""
    return type(jax.numpy.zeros(())), type(jax.random.key(0))


def types(jax: ModuleType) -> tuple[type, ...]:
    """The JAX types stored as members."""
    return _concrete(jax)


def member(obj: Any) -> Member:
    """A JAX array or typed key as a member."""
    import jax

    if type(obj) is _concrete(jax)[1]:
        entry = {"framework": "jax", "type": "PRNGKey", "impl": str(jax.random.key_impl(obj))}
        return Member("jax", np.asarray(jax.random.key_data(obj)), entry)
    array = np.asarray(obj)
    name = array.dtype.name
    if name not in NATIVE:
        if array.dtype.type.__module__ != "ml_dtypes":
            raise UnsupportedArrayError(f"JAX dtype {array.dtype} cannot be stored (no numpy layout)")
        array = array.view(bits_dtype(array.dtype.itemsize))
    devices = sorted(str(device) for device in obj.devices())
    entry = {"framework": "jax", "type": "Array", "framework_dtype": name, "device": ",".join(devices)}
    return Member("jax", array, entry)


def allocator(jax: ModuleType) -> Allocate:
    """Memory for a member's array: numpy's, since JAX copies it onto its device."""
    return np.empty


def problem(array: np.ndarray, entry: dict[str, Any]) -> str | None:
    """Why ``array`` and ``entry`` are not a JAX object this module wrote (None: they are)."""
    if entry["type"] == "PRNGKey":
        if entry.get("impl") not in _KEY_IMPLS or array.dtype != np.uint32:
            return f"a JAX key must be uint32 data of a known implementation, not {entry.get('impl')!r}"
        return None
    name = entry.get("framework_dtype")
    stored = NATIVE.get(name) if isinstance(name, str) else None
    if stored is None and not (isinstance(name, str) and _ML_DTYPE_NAME.fullmatch(name)):
        return f"manifest dtype {name!r} is no JAX dtype"
    if (stored or bits_dtype(array.dtype.itemsize)) != array.dtype.str:
        return f"manifest dtype {name!r} does not match the member's {array.dtype.str}"
    return None


def rebuild(jax: ModuleType, array: np.ndarray, entry: dict[str, Any], map_location: Any) -> Any:
    """The JAX object of a checked member, on JAX's default device."""
    if entry["type"] == "PRNGKey":
        return jax.random.wrap_key_data(jax.numpy.asarray(array), impl=entry["impl"])
    name = entry["framework_dtype"]
    if name not in NATIVE:
        import ml_dtypes

        dtype = np.dtype(getattr(ml_dtypes, name))
        if dtype.type.__module__ != "ml_dtypes" or dtype.itemsize != array.dtype.itemsize:
            raise TypeError(f"ml_dtypes.{name} is not a dtype of {array.dtype.itemsize} bytes")
        array = array.view(dtype)
    return jax.numpy.asarray(array)
