"""Hostile pickles that use trusted names only, generated from five families.

An independent review found five ways past a loader that audited the stream
apart from building it; each family here is generated in several encodings
(pickle protocols 0 to 5, calls through ``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``,
the ``copyreg`` helpers, ``OBJ``; globals and objects reached through the memo)
with sizes and values drawn from a seeded ``random.Random``:

1. ``allocation``: a small stream asking a trusted constructor for hundreds of
   millions of items (tuple, frozenset, list, bytes, deque, object arrays) by
   an alternate call form;
2. ``dtype after use``: a dtype built again after an array or scalar used it,
   claiming a gigabyte per element;
3. ``build on member``: ``BUILD`` on the array of a persistent id
   (``ndarray.a``), an object dtype over a short list;
4. ``random state``: numpy's own random pickles with a state out of its range
   (MT19937 ``pos``, Philox ``buffer_pos``, PCG64's 128-bit state, buffered
   ``uinteger``, RandomState's legacy tuple, a SeedSequence pool);
5. ``gpuarray prefix``: the context name of a Theano ``gpuarray`` member made
   of any of the above, or ``BUILD`` on a trusted global.

:func:`family_pickles` returns ``name -> stream``; streams of family 3 expect
an array member ``a`` (persistent id ``ndarray.a``), those of family 5 are
member prefixes; :func:`family_archive` wraps any of them in an archive.
"""

from __future__ import annotations

import collections
import copyreg
import io
import json
import pickle
import random
import zipfile
from typing import Any

import numpy as np
from numpy.random import _pickle as random_pickle

_BIT_GENERATOR_CTOR = getattr(random_pickle, "__bit_generator_ctor")
_GENERATOR_CTOR = getattr(random_pickle, "__generator_ctor")
_RANDOMSTATE_CTOR = getattr(random_pickle, "__randomstate_ctor")
_CORE = "numpy._core" if np.__version__.startswith("2") else "numpy.core"


class _Reduce:
    """Pickles as ``func(*args)`` plus an optional ``BUILD`` of ``state``."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _encodings(value: Any) -> dict[str, bytes]:
    """``value`` pickled by every protocol, once alone and once twice in a list
    (the second time through the memo); a ``copyreg.__newobj__`` call also as
    the ``NEWOBJ``/``NEWOBJ_EX`` opcodes and as a ``REDUCE`` of the helper."""
    if isinstance(value, _Reduce) and value.func in (copyreg.__newobj__, copyreg.__newobj_ex__):
        return _newobj_encodings(value)
    out = {}
    for protocol in (0, 2, 4, 5):
        out[f"protocol {protocol}"] = pickle.dumps(value, protocol=protocol)
        out[f"protocol {protocol}, memo"] = pickle.dumps([value, value], protocol=protocol)
    return out


def _newobj_encodings(value: _Reduce) -> dict[str, bytes]:
    cls, rest = value.args[0], value.args[1:]
    klass = _g(cls.__module__, cls.__qualname__)
    if value.func is copyreg.__newobj_ex__:
        args, kwargs = _v(rest[0]), _v(rest[1])
        return {"NEWOBJ_EX": b"\x80\x04" + klass + args + kwargs + b"\x92.",
                "REDUCE of copyreg.__newobj_ex__": b"\x80\x02" + _call(
                    _g("copyreg", "__newobj_ex__"), klass, args, kwargs) + b"."}
    args = _v(rest)
    return {
        "protocol 0": pickle.dumps(value, protocol=0),
        "NEWOBJ": b"\x80\x02" + klass + args + b"\x81.",
        "NEWOBJ, class through the memo": b"\x80\x02" + klass + b"q\x07" + b"0h\x07" + args + b"\x81.",
        "REDUCE of copyreg.__newobj__": b"\x80\x02" + _g("copyreg", "__newobj__") + b"(" + klass
        + args[:-1] + b"tR." if args.endswith(b"\x85") else b"\x80\x02" + _call(
            _g("copyreg", "__newobj__"), klass, b"".join(_v(arg) for arg in rest)) + b".",
    }


def _allocations(rng: random.Random) -> dict[str, Any]:
    n = rng.randrange(10**8, 25 * 10**7)
    big = range(n)
    return {
        f"copyreg.__newobj__(tuple, range({n}))": _Reduce(copyreg.__newobj__, (tuple, big)),
        f"copyreg.__newobj__(frozenset, range({n}))": _Reduce(copyreg.__newobj__, (frozenset, big)),
        f"copyreg.__newobj_ex__(tuple, (range({n}),), {{}})": _Reduce(copyreg.__newobj_ex__, (tuple, (big,), {})),
        f"copyreg.__newobj__(bytes, {n})": _Reduce(copyreg.__newobj__, (bytes, n)),
        f"copyreg.__newobj__(bytearray, {n})": _Reduce(copyreg.__newobj__, (bytearray, n)),
        f"list(range({n}))": _Reduce(list, (big,)),
        f"collections.deque(range({n}))": _Reduce(collections.deque, (big,)),
        f"copyreg.__newobj__(numpy.ndarray, ({n},), 'O')": _Reduce(copyreg.__newobj__, (np.ndarray, (n,), "O")),
        f"copyreg.__newobj__(numpy.void, {n})": _Reduce(copyreg.__newobj__, (np.void, n)),
        f"copyreg._reconstructor(tuple, tuple, range({n}))": _Reduce(copyreg._reconstructor, (tuple, tuple, big)),
    }


def _call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


def _g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _v(value: Any) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]


def _dtype(spec: str, memo: int) -> bytes:
    """``numpy.dtype(spec, False, True)`` stored at ``memo`` (protocol 2 opcodes)."""
    return _call(_g("numpy", "dtype"), _v(spec), b"\x89\x88") + b"r" + memo.to_bytes(4, "little")


def _get(memo: int, long: bool) -> bytes:
    return b"j" + memo.to_bytes(4, "little") if long else b"h" + bytes([memo])


def _dtype_after_use(rng: random.Random) -> dict[str, bytes]:
    size = rng.choice([2**30, 2**31 - 8, 10**9])
    state = _v((3, "|", None, None, None, size, 1, 0))
    out = {}
    for long in (False, True):
        memo = rng.randrange(1, 200)
        used_by_scalar = _call(_g(f"{_CORE}.multiarray", "scalar"), _get(memo, long), _v(b"\0" * 8))
        array = (_call(_g(f"{_CORE}.multiarray", "_reconstruct"), _g("numpy", "ndarray"), _v((0,)), _v(b"b"))
                 + b"(K\x01K\x04\x85" + _get(memo, long) + b"\x89" + _v(b"\0" * 32) + b"tb")
        for user, use in (("a scalar", used_by_scalar), ("an array", array)):
            body = _dtype("V8", memo) + b"0" + use + _get(memo, long) + state + b"b0" + use
            out[f"dtype V8 used by {user}, rebuilt with item size {size}, {'long' if long else 'short'} memo"] = (
                b"\x80\x02" + body + b".")
    newobj = _call(_g("copyreg", "__newobj__"), _g("numpy", "dtype"), _v("V8"), b"\x89\x88") + state + b"b"
    out["numpy.dtype through copyreg.__newobj__, then BUILD"] = b"\x80\x02" + newobj + b"."
    return out


def _build_on_member(rng: random.Random) -> dict[str, bytes]:
    n = rng.randrange(10**3, 10**8)
    out = {}
    for spec in ("O8", "V16"):
        dtype = _call(_g("numpy", "dtype"), _v(spec), b"\x89\x88")
        for items, data in (("[None]", b"]Na"), ("b''", _v(b""))):
            state = b"(K\x01" + _v((n,)) + dtype + b"\x89" + data + b"t"
            for persid, pid in (("BINPERSID", _v("ndarray.a") + b"Q"), ("PERSID", b"Pndarray.a\n")):
                out[f"{persid} ndarray.a BUILD ({n},) {spec} from {items}"] = b"\x80\x02" + pid + state + b"b."
    return out


def _random_states(rng: random.Random) -> dict[str, Any]:
    def mt(pos: int, key: Any = None) -> dict[str, Any]:
        key = np.arange(624, dtype=np.uint32) if key is None else key
        return {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}

    def buffered(name: str, **fields: Any) -> dict[str, Any]:
        state = {"bit_generator": name, "has_uint32": 0, "uinteger": 0}
        if name == "Philox":
            state.update(state={"counter": np.zeros(4, np.uint64), "key": np.ones(2, np.uint64)},
                         buffer=np.zeros(4, np.uint64), buffer_pos=4)
        elif name == "SFC64":
            state.update(state={"state": np.arange(4, dtype=np.uint64)})
        else:
            state.update(state={"state": 1, "inc": 3})
        for key, value in fields.items():
            (state["state"] if key in state["state"] else state)[key] = value
        return state

    pos, buffer_pos = rng.choice([-1, 625, 5000, 2**31]), rng.choice([-1, 5, 1000])
    states = {
        f"MT19937 pos {pos}": mt(pos),
        "MT19937 key of 623 words": mt(0, np.arange(623, dtype=np.uint32)),
        "MT19937 key of int64": mt(0, np.arange(624, dtype=np.int64)),
        f"Philox buffer_pos {buffer_pos}": buffered("Philox", buffer_pos=buffer_pos),
        "Philox counter of 3 words": buffered("Philox", counter=np.zeros(3, np.uint64)),
        "PCG64 state 2**128": buffered("PCG64", state=2**128),
        "PCG64DXSM inc -1": buffered("PCG64DXSM", inc=-1),
        "SFC64 has_uint32 2": buffered("SFC64", has_uint32=2),
        "PCG64 uinteger 2**32": buffered("PCG64", uinteger=2**32),
        "SFC64 extra field": {**buffered("SFC64"), "extra": 1},
    }
    out: dict[str, Any] = {}
    for label, state in states.items():
        name = state["bit_generator"]
        out[f"bit generator, {label}"] = _Reduce(_BIT_GENERATOR_CTOR, (name,), state)
        out[f"Generator, {label}"] = _Reduce(_GENERATOR_CTOR, (name,), state)
    legacy_pos = rng.choice([-5, 625, 10**6])
    out[f"RandomState legacy tuple pos {legacy_pos}"] = _Reduce(
        _RANDOMSTATE_CTOR, ("MT19937",), ("MT19937", np.arange(624, dtype=np.uint32), legacy_pos, 0, 0.0))
    out[f"RandomState dict pos {legacy_pos}"] = _Reduce(
        _RANDOMSTATE_CTOR, ("MT19937",), {**mt(legacy_pos), "has_gauss": 0, "gauss": 0.0})
    out["RandomState has_gauss 7"] = _Reduce(_RANDOMSTATE_CTOR, ("MT19937",), {**mt(0), "has_gauss": 7, "gauss": 0.0})
    seed = np.random.SeedSequence(rng.randrange(2**32))
    func, args, state = seed.__reduce__()
    forged_pool = (state[0], state[1], state[2] ^ np.uint32(1), state[3], state[4])
    out["SeedSequence pool that its entropy does not make"] = _Reduce(func, args, forged_pool)
    out["SeedSequence pool_size 10**9"] = _Reduce(func, args, (*state[:3], 10**9, state[4]))
    return out


def _gpuarray_prefixes(rng: random.Random) -> dict[str, bytes]:
    n = rng.randrange(10**8, 10**9)
    counter = b"\x80\x02" + _g("collections", "Counter") + b"N}X\x05\x00\x00\x00pwnedK\x01s\x86b."
    reconstructor = b"\x80\x02" + _g("copyreg", "_reconstructor") + b"N}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    out = {
        "BUILD on collections.Counter (process-wide attribute)": counter,
        "BUILD setting copyreg._reconstructor.__defaults__": reconstructor,
        f"list(range({n}))": pickle.dumps(_Reduce(list, (range(n),)), protocol=2),
    }
    out.update({f"dtype after use: {k}": v for k, v in list(_dtype_after_use(rng).items())[:2]})
    return out


def family_pickles(rng: random.Random) -> dict[str, tuple[str, bytes]]:
    """``name -> (family, stream)`` for the five families, in every encoding."""
    out: dict[str, tuple[str, bytes]] = {}
    for name, value in _allocations(rng).items():
        for encoding, data in _encodings(value).items():
            out[f"allocation: {name}, {encoding}"] = ("allocation", data)
    for name, data in _dtype_after_use(rng).items():
        out[f"dtype after use: {name}"] = ("dtype after use", data)
    for name, data in _build_on_member(rng).items():
        out[f"build on member: {name}"] = ("build on member", data)
    for name, value in _random_states(rng).items():
        for encoding, data in _encodings(value).items():
            out[f"random state: {name}, {encoding}"] = ("random state", data)
    for name, data in _gpuarray_prefixes(rng).items():
        out[f"gpuarray prefix: {name}"] = ("gpuarray prefix", data)
    return out


def family_archive(family: str, data: bytes, *, manifest: bool = True) -> bytes:
    """Our archive of ``{"a": zeros(2)}`` whose pickle is ``data`` instead or,
    for ``gpuarray prefix``, whose one member ``x`` is a Theano ``gpuarray``
    member with context name ``data``; without a manifest, as Theano's are."""
    from luigi_checkpoint import storage

    good, out, npy = io.BytesIO(), io.BytesIO(), io.BytesIO()
    storage.dump({"a": np.zeros(2)}, good)
    np.save(npy, np.arange(3.0))
    gpuarray = family == "gpuarray prefix"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(out, "w") as archive:
        for name in source.namelist():
            content = source.read(name)
            if name == "pkl":
                content = b"\x80\x02X\x0a\x00\x00\x00gpuarray.xQ." if gpuarray else data
            if name == "manifest.json":  # zipfile lays members out otherwise: no offsets
                listed = json.loads(content)
                listed["arrays"] = [{**entry, "offset": None} for entry in listed["arrays"]]
                if gpuarray:
                    listed["arrays"] = [{**listed["arrays"][0], "name": "x", "shape": [3], "nbytes": 24}]
                content = json.dumps(listed).encode()
            if not ((name == "a" and gpuarray) or (name == "manifest.json" and not manifest)):
                archive.writestr(name, content)
        if gpuarray:
            archive.writestr("x", data + npy.getvalue())
    return out.getvalue()
