"""Framework arrays as NPY members: torch tensors, parameters and generators;
JAX arrays and PRNG keys.

Theano stored every ``ndarray`` and every ``CudaNdarray`` of a pickled object
as an NPY member; training states today hold torch tensors and JAX arrays.
The archive pickler hands each framework object it meets to :func:`as_member`,
which turns it into the NPY member's array plus the manifest fields that say
what it was; the pickle holds only the persistent id ``<framework>.<member>``
(``torch.model/0_weight``). Loading hands the member back to a
:class:`Restorer`, which rebuilds the object with the framework's own
constructors from validated data (``torch.from_numpy``, ``Generator.set_state``,
``jax.numpy.asarray``, ``jax.random.wrap_key_data``): no framework pickle code
ever runs, so loading a training state is safe by default. Each framework's
rules are in its own module (:mod:`._torch_members`, :mod:`._jax_members`).

dtypes numpy lacks (``bfloat16``, the float8 and float4 variants, torch's
``complex32``, JAX's ``int4``) are stored as their bits: an unsigned integer
array of the same item size (``<u2`` for bfloat16), which ``numpy.load`` reads
as such; the manifest's ``framework_dtype`` names the true dtype, which loading
restores (``ml_dtypes`` views the bits in numpy: ``a.view(ml_dtypes.bfloat16)``).

Sharing: the same object met twice is one member and loads as one object.
Distinct tensors that are views of one storage (``a`` and ``a[2:]``) are
distinct members and load as independent tensors, as numpy views do.

With ``as_numpy=True``, or when the framework cannot be imported (then with a
:class:`FrameworkMissingWarning`), members load as the arrays ``numpy.load``
returns.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from . import _jax_members, _torch_members
from ._member import Member
from ._reading import Allocate
from .errors import ArchiveError, UnloadableArchiveError

__all__ = ["KINDS", "FrameworkMissingWarning", "Member", "Restorer", "as_member", "framework_types"]

_RULES: dict[str, ModuleType] = {"torch": _torch_members, "jax": _jax_members}
KINDS = tuple(_RULES)
"""Persistent id kinds of framework members (besides numpy's ``ndarray``)."""


class FrameworkMissingWarning(UserWarning):
    """A framework's arrays were loaded as numpy arrays because it is not installed."""


def framework_types() -> dict[type, str]:
    """The types :func:`as_member` takes, with their framework, among the
    frameworks imported so far (a state cannot hold a tensor of a framework
    that is not imported)."""
    found: dict[type, str] = {}
    for kind, rules in _RULES.items():
        module = sys.modules.get(kind)
        if module is not None:
            found.update(dict.fromkeys(rules.types(module), kind))
    return found


def as_member(obj: Any, kind: str) -> Member:
    """``obj`` (a type of ``kind`` in :func:`framework_types`) as a member.

    Raises :class:`UnsupportedArrayError` for what has no dense data or dtype to store.
    """
    return _RULES[kind].member(obj)


class Restorer:
    """Rebuilds framework objects from their members during one load.

    ``map_location`` is the torch device tensors and generators are put on
    (default: CPU; JAX arrays go to JAX's default device); ``as_numpy``
    returns the members' numpy arrays instead. ``source`` names the archive
    in errors and warnings.
    """

    def __init__(self, source: str, *, map_location: Any = None, as_numpy: bool = False) -> None:
        self._source = source
        self._map_location = map_location
        self._as_numpy = as_numpy
        self._missing: set[str] = set()

    def allocator(self, kind: str) -> Allocate:
        """Memory for the array of a ``kind`` member: the framework's own where
        the object it rebuilds shares it, numpy's otherwise."""
        module = self._framework(kind)
        if module is None:
            return np.empty
        allocate: Allocate = _RULES[kind].allocator(module)
        return allocate

    def restore(self, kind: str, name: str, array: np.ndarray, entry: Any) -> Any:
        """The object member ``name`` holds, from its ``array`` and manifest ``entry``."""
        where = f"{self._source}: member {name!r}"
        rules = _RULES[kind]
        if not isinstance(entry, dict) or entry.get("framework") != kind or entry.get("type") not in rules.TYPES:
            raise ArchiveError(f"{where}: persistent id of kind {kind!r} without a manifest entry of that framework")
        problem = rules.problem(array, entry)
        if problem:
            raise ArchiveError(f"{where}: {problem}")
        module = self._framework(kind)
        if module is None:
            return array
        try:
            return rules.rebuild(module, array, entry, self._map_location)
        except Exception as exc:  # frameworks raise what they like (torch: AssertionError without CUDA)
            raise UnloadableArchiveError(
                f"{where}: {kind} cannot rebuild the {entry['type']} (map_location={self._map_location!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _framework(self, kind: str) -> ModuleType | None:
        """The module that rebuilds ``kind`` members; None when they stay numpy
        arrays (``as_numpy``, or the framework is missing: warned once)."""
        if self._as_numpy or kind in self._missing:
            return None
        try:
            return importlib.import_module(kind)
        except ImportError:
            self._missing.add(kind)
            warnings.warn(
                f"{self._source}: {kind} is not installed, so its arrays load as the numpy "
                "arrays numpy.load reads (dtypes numpy lacks as their bits); install "
                f"luigi-checkpoint[{kind}] to load them as {kind} objects",
                FrameworkMissingWarning,
                stacklevel=3,
            )
            return None
