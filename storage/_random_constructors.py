"""Our constructors for numpy's random objects in a pickle stream, with schemas.

numpy's state setters check the shape of a state, not its ranges: a Generator
restored with MT19937 ``pos`` 5000, Philox ``buffer_pos`` -1 or a legacy
RandomState ``pos`` out of range loads, and its first draw reads outside the
generator's memory (a crash, or heap bytes handed out as random numbers). Here
every state is checked field by field against the ranges numpy documents
before a real object is made:

======================  ==============================================================
bit generator           state
======================  ==============================================================
MT19937                 ``key``: uint32[624]; ``pos``: 0..624
PCG64, PCG64DXSM        ``state``, ``inc``: 0..2**128-1
Philox                  ``counter``: uint64[4]; ``key``: uint64[2]; ``buffer``: uint64[4];
                        ``buffer_pos``: 0..4
SFC64                   ``state``: uint64[4]
(all but MT19937)       ``has_uint32``: 0 or 1; ``uinteger``: 0..2**32-1
RandomState             its bit generator's, plus ``has_gauss``: 0 or 1 and ``gauss``: a float
SeedSequence            ``entropy``: None, an int >= 0 or a sequence of them;
                        ``spawn_key``: ints >= 0; ``pool_size`` >= 4; ``n_children_spawned``
                        >= 0; ``pool``: uint32[pool_size], the pool that entropy makes
======================  ==============================================================

A dict must have exactly these keys. Every numpy version's pickling helpers
are read (:mod:`luigi_checkpoint.storage._numpy_compat` lists their forms);
they only ever make numpy's own five bit generators. A bit generator, a
Generator and a RandomState are :class:`Pending` until the stream ends, since
a ``BUILD`` sets their state; one bit generator shared by two objects stays
shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.random import bit_generator as _bit_generator
from numpy.random import _pickle as _random_pickle

from ._constructors import Load, Pending, Placeholder, Rule, brief, holds_placeholder, settled
from ._numpy_compat import BIT_GENERATORS
from ._numpy_constructors import as_array

__all__ = ["RANDOM_RULES"]

_U32, _U64 = np.dtype(np.uint32), np.dtype(np.uint64)
_BUFFERED = {"has_uint32": (0, 1), "uinteger": (0, 2**32 - 1)}
_SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (fields of state["state"], other fields); a field: (low, high) or (dtype, shape)
    "MT19937": ({"key": (_U32, (624,)), "pos": (0, 624)}, {}),
    "PCG64": ({"state": (0, 2**128 - 1), "inc": (0, 2**128 - 1)}, _BUFFERED),
    "PCG64DXSM": ({"state": (0, 2**128 - 1), "inc": (0, 2**128 - 1)}, _BUFFERED),
    "Philox": ({"counter": (_U64, (4,)), "key": (_U64, (2,))},
               {"buffer": (_U64, (4,)), "buffer_pos": (0, 4), **_BUFFERED}),
    "SFC64": ({"state": (_U64, (4,))}, _BUFFERED),
}


def _fields(load: Load, found: Any, schema: dict[str, Any], what: str) -> dict[str, Any]:
    if type(found) is not dict or set(found) != set(schema):
        keys = sorted(found) if type(found) is dict else type(found).__name__
        raise load.corrupt(f"{what} has {keys}, not the fields {sorted(schema)}")
    checked = {}
    for key, (first, second) in schema.items():
        value = found[key]
        if isinstance(first, np.dtype):
            checked[key] = as_array(load, value, first, second, f"{what}[{brief(key)}]")
        else:
            if isinstance(value, np.integer):
                value = int(value)
            if type(value) not in (int, bool) or not first <= value <= second:
                raise load.corrupt(f"{what}[{brief(key)}] = {brief(value)} is outside [{first}, {second}]")
            checked[key] = int(value)
    return checked


def checked_state(load: Load, name: str, state: Any) -> dict[str, Any]:
    """A bit generator ``name``'s state dict, checked against its schema."""
    inner, outer = _SCHEMAS[name]
    if type(state) is not dict or state.get("bit_generator") != name:
        found = state.get("bit_generator") if type(state) is dict else type(state).__name__
        raise load.corrupt(f"{name} state for {brief(found)}")
    rest = {key: value for key, value in state.items() if key not in ("bit_generator", "state")}
    return {"bit_generator": name, "state": _fields(load, state.get("state"), inner, f"{name} state"),
            **_fields(load, rest, outer, f"{name} state")}


class BitGeneratorProxy(Pending):
    """``__bit_generator_ctor(name or class)``, then a ``BUILD`` of its state."""

    __slots__ = ("name", "_made", "_state", "_seed")

    def __init__(self, load: Load, name: str) -> None:
        super().__init__(load)
        self.name, self._made, self._state, self._seed = name, None, None, None

    def set_state(self, state: Any) -> None:
        if self._made is not None:
            raise self.load.corrupt(f"{self.name} state set after use")
        if type(state) is tuple and len(state) == 2:  # numpy 2: (state, seed sequence)
            state, seed = state
            if seed is not None and not isinstance(seed, (SeedSequenceProxy, Placeholder)):
                raise self.load.corrupt(f"{self.name} seed sequence is a {type(seed).__name__}")
            self._seed = seed
        self._state = state if holds_placeholder(state) else checked_state(self.load, self.name, state)

    __setstate__ = set_state

    def value(self) -> Any:
        if self._made is None:
            if holds_placeholder(self._state) or type(self._seed) is Placeholder:
                return Placeholder()
            seed = self._seed.value() if self._seed is not None else None
            self._made = BIT_GENERATORS[self.name](seed)
            if self._state is not None:
                self._made.state = self._state
        return self._made


def _bit_generator_of(load: Load, spec: Any = "MT19937") -> BitGeneratorProxy:
    """A bit generator from what any numpy's helpers pass: a name, a class or the object."""
    if isinstance(spec, BitGeneratorProxy):
        return spec
    kind = settled(spec)
    name = kind if type(kind) is str else getattr(kind, "__name__", None)
    if name not in BIT_GENERATORS or (type(kind) is not str and kind is not BIT_GENERATORS[name]):
        raise load.corrupt(f"{brief(spec)} is not one of numpy's bit generators {sorted(BIT_GENERATORS)}")
    return BitGeneratorProxy(load, name)


class GeneratorProxy(Pending):
    """``__generator_ctor(bit generator)``; numpy 1.x then ``BUILD``\\ s its state dict."""

    __slots__ = ("bits", "_made")

    def __init__(self, load: Load, bits: BitGeneratorProxy) -> None:
        super().__init__(load)
        self.bits, self._made = bits, None

    def __setstate__(self, state: Any) -> None:
        self.bits.set_state(state)

    def value(self) -> Any:
        if self._made is None:
            bits = self.bits.value()
            self._made = bits if type(bits) is Placeholder else np.random.Generator(bits)
        return self._made


def _generator_ctor(load: Load, bits: Any = "MT19937", bit_generator_ctor: Any = None) -> GeneratorProxy:
    return GeneratorProxy(load, _bit_generator_of(load, bits))


class RandomStateProxy(Pending):
    """``__randomstate_ctor(bit generator)`` or ``__RandomState_ctor()``, then a
    ``BUILD`` of ``get_state()``'s dict or its legacy tuple."""

    __slots__ = ("bits", "_gauss", "_made")

    def __init__(self, load: Load, bits: BitGeneratorProxy) -> None:
        super().__init__(load)
        self.bits, self._gauss, self._made = bits, None, None

    def __setstate__(self, state: Any) -> None:
        if holds_placeholder(state):
            self._gauss = Placeholder()
            return
        if type(state) is tuple and len(state) == 5 and state[0] == "MT19937":  # legacy form
            _, key, pos, has_gauss, gauss = state
            state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos},
                     "has_gauss": has_gauss, "gauss": gauss}
        if type(state) is not dict or state.get("bit_generator") != self.bits.name:
            raise self.load.corrupt(f"RandomState state {type(state).__name__} over {self.bits.name}")
        has_gauss, gauss = state.get("has_gauss"), state.get("gauss")
        if type(has_gauss) not in (int, bool) or has_gauss not in (0, 1) or type(gauss) not in (float, int):
            raise self.load.corrupt(f"RandomState has_gauss {brief(has_gauss)}, gauss {brief(gauss)}")
        self.bits.set_state({key: value for key, value in state.items() if key not in ("has_gauss", "gauss")})
        self._gauss = (int(has_gauss), float(gauss))

    def value(self) -> Any:
        if self._made is None:
            bits = self.bits.value()
            if type(bits) is Placeholder or type(self._gauss) is Placeholder:
                return Placeholder()
            made = np.random.RandomState(bits)
            if self._gauss is not None:
                made.set_state({**bits.state, "has_gauss": self._gauss[0], "gauss": self._gauss[1]})
            self._made = made
        return self._made


def _randomstate_ctor(load: Load, bits: Any = "MT19937", bit_generator_ctor: Any = None) -> RandomStateProxy:
    return RandomStateProxy(load, _bit_generator_of(load, bits))


class SeedSequenceProxy(Pending):
    """``__pyx_unpickle_SeedSequence(SeedSequence, checksum, state)`` and its ``BUILD``."""

    __slots__ = ("_made",)

    def __init__(self, load: Load) -> None:
        super().__init__(load)
        self._made: Any = None

    def __setstate__(self, state: Any) -> None:
        if self._made is not None:
            raise self.load.corrupt("SeedSequence state set twice")
        if holds_placeholder(state):
            self._made = Placeholder()
            return
        if type(state) is not tuple or len(state) != 5:
            raise self.load.corrupt("SeedSequence state is not (entropy, n_children_spawned, "
                                    "pool, pool_size, spawn_key)")
        entropy, spawned, pool, pool_size, spawn_key = state
        ints = (entropy,) if entropy is None or type(entropy) is int else entropy
        if isinstance(ints, np.ndarray):
            ints = ints.tolist()
        size_ok = type(pool_size) is int and 4 <= pool_size <= 1024
        if not (type(ints) in (tuple, list) and all(n is None or (type(n) is int and n >= 0) for n in ints)
                and type(spawn_key) is tuple and all(type(n) is int and n >= 0 for n in spawn_key)
                and type(spawned) is int and spawned >= 0 and size_ok):
            raise self.load.corrupt(f"SeedSequence state {brief(state)} out of its ranges")
        self.load.charge(len(ints) + len(spawn_key), "SeedSequence")
        made = np.random.SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size,
                                      n_children_spawned=spawned)
        stated = as_array(self.load, pool, np.dtype(np.uint32), (pool_size,), "SeedSequence pool")
        if not np.array_equal(stated, made.pool):
            raise self.load.corrupt("SeedSequence pool is not the one its entropy makes")
        self._made = made

    def value(self) -> Any:
        if self._made is None:
            raise self.load.corrupt("SeedSequence made but never filled")
        return self._made


def _unpickle_seed_sequence(load: Load, kind: Any, checksum: Any, state: Any = None) -> SeedSequenceProxy:
    if settled(kind) is not np.random.SeedSequence or type(checksum) is not int:
        raise load.corrupt(f"__pyx_unpickle_SeedSequence of {brief(kind)}")
    made = SeedSequenceProxy(load)
    if state is not None:
        made.__setstate__(state)
    return made


def _seedless(load: Load) -> Any:
    return _bit_generator.SeedlessSeedSequence()


_HELPERS = "numpy.random._pickle"
RANDOM_RULES: dict[str, Rule] = {
    f"{_HELPERS}.__bit_generator_ctor": Rule(getattr(_random_pickle, "__bit_generator_ctor"),
                                            _bit_generator_of),
    f"{_HELPERS}.__generator_ctor": Rule(getattr(_random_pickle, "__generator_ctor"), _generator_ctor),
    f"{_HELPERS}.__randomstate_ctor": Rule(getattr(_random_pickle, "__randomstate_ctor"),
                                          _randomstate_ctor),
    "numpy.random.__RandomState_ctor": Rule(
        getattr(np.random, "__RandomState_ctor", None), lambda load: RandomStateProxy(load, BitGeneratorProxy(load, "MT19937"))),
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": Rule(
        getattr(_bit_generator, "__pyx_unpickle_SeedSequence"), _unpickle_seed_sequence),
    "numpy.random.bit_generator.SeedSequence": Rule(np.random.SeedSequence),
    "numpy.random.bit_generator.SeedlessSeedSequence": Rule(_bit_generator.SeedlessSeedSequence,
                                                            _seedless, _seedless),
    "numpy.random._generator.Generator": Rule(np.random.Generator),
    "numpy.random.mtrand.RandomState": Rule(np.random.RandomState),
    **{f"{cls.__module__}.{cls.__qualname__}": Rule(cls) for cls in BIT_GENERATORS.values()},
}
