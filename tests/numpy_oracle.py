"""The other side of the cross-version tests (``tests/test_numpy_versions.py``).

Another interpreter runs it as ``python tests/numpy_oracle.py COMMAND FOLDER``
(the venv with the oldest numpy ``pyproject.toml`` allows, or the one with
Theano 1.0.5 and numpy 1.23); the test module imports it, so both sides build
and describe the states with the same code. Every command prints JSON:

- ``write-ours``: ``storage.dump`` of every case, pickle protocols 2 and 5;
- ``write-native``: every case in our archive layout, pickled with numpy's own
  reductions (plain ``pickle``), as this library wrote before its pickles
  named only what every numpy has;
- ``write-theano``: ``theano.misc.pkl_utils.dump`` of every case;
- ``read-ours``: ``storage.load`` of every archive in FOLDER, safe but for
  Theano's object arrays (:data:`PICKLED_MEMBERS`);
- ``read-theano``: ``theano.misc.pkl_utils.load`` of every archive in FOLDER;
- ``versions``: the numpy and Theano (or None) this interpreter has.

A write prints ``{archive name: description}`` of what it wrote, a read
``{archive name: description, or {"error": message}}``. A description is
plain JSON: exact bytes of arrays and scalars, dtype layouts, and each random
generator's state plus its next draws. It runs on numpy 1.23 and later and
imports only numpy, plus ``luigi_checkpoint`` or ``theano`` for the commands
that need them.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from typing import Any

import numpy as np

PROTOCOLS = (2, 5)
CASES = ("scalars", "dtypes", "scalar_types", "object_arrays", "generators", "legacy_random")
PICKLED_MEMBERS = "object_arrays-theano"
"""Archives whose object arrays are pickled NPY members (Theano writes them so):
``storage.load`` reads them only with ``unsafe=True``, and so does ``read-ours``."""


def _advanced(rng: Any) -> Any:
    """``rng`` moved past its seed, with a cached half of its output where it keeps one."""
    rng.random(3)
    rng.integers(0, 10, 1, dtype=np.uint32)  # leaves a buffered 32-bit half
    return rng


def cases() -> dict[str, dict[str, Any]]:
    """The states, made anew and the same on every numpy."""
    record = np.dtype([("id", "<i4"), ("w", ">f8", (2,))])
    aligned = np.dtype([("a", "u1"), ("b", "<f8"), ("c", "<i2")], align=True)
    legacy = np.random.RandomState(11)
    legacy.standard_normal()  # caches the second of a Gaussian pair
    return {
        "scalars": {
            "floats": [np.float16(0.5), np.float32(1.5), np.float64(-2.25), np.longdouble(1) / 3],
            "ints": [np.int8(-3), np.uint16(7), np.int64(-2**40), np.uint64(2**63 + 5)],
            "other": [np.bool_(True), np.complex64(1 - 2j), np.clongdouble(1j) / 3,
                      np.datetime64("2020-01-02T03:04", "m"), np.timedelta64(5, "D"),
                      np.str_("text"), np.bytes_(b"raw")],
            "record": np.zeros(1, record)[0],
        },
        "dtypes": {
            "plain": [np.dtype("<f8"), np.dtype(">i2"), np.dtype("U5"), np.dtype("M8[ms]")],
            "record": record,
            "aligned": aligned,
            "nested": np.dtype([("inner", aligned), ("tag", "S3"), ("n", "<u8", (2, 2))]),
            "titled": np.dtype({"names": ["x"], "formats": ["<f4"], "titles": ["The x"]}),
            "objects": np.dtype([("o", "O"), ("v", "<f8")]),
        },
        "scalar_types": {
            "types": [np.bool_, np.float32, np.int64, np.longdouble, np.clongdouble,
                      np.datetime64, np.str_, np.void, np.object_],
        },
        "object_arrays": {
            "mixed": np.array([1, None, "x", [2.5, (3, "y")], np.float32(2)], dtype=object),
            "grid": np.array([[{"k": 1}, b"b"], [np.arange(3), 4.5]], dtype=object),
            "records": np.array([(1, "a"), (2, None)], dtype=[("n", "<i8"), ("o", "O")]),
        },
        "generators": {
            name: _advanced(np.random.Generator(getattr(np.random, name)(seed)))
            for seed, name in enumerate(("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"))
        },
        "legacy_random": {
            "random_state": legacy,
            "random_state_pcg": np.random.RandomState(np.random.PCG64(4)),
            "bit_generator": np.random.Philox(key=7),
            "seed_sequence": np.random.SeedSequence(1234, spawn_key=(2,)),
            "weights": np.arange(6.0).reshape(2, 3),
        },
    }


# ---------------------------------------------------------------- descriptions


def describe(obj: Any) -> Any:
    """``obj`` as plain JSON that two numpy versions agree on when they agree on ``obj``.

    Random generators are described by their state and next draws (which
    advance them: describe a state once).
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return {"float": obj.hex()}
    if isinstance(obj, complex):
        return {"complex": [obj.real.hex(), obj.imag.hex()]}
    if isinstance(obj, bytes):
        return {"bytes": obj.hex()}
    if isinstance(obj, (list, tuple)):
        return {type(obj).__name__: [describe(item) for item in obj]}
    if isinstance(obj, dict):
        return {"dict": [[describe(key), describe(value)] for key, value in obj.items()]}
    if isinstance(obj, np.dtype):
        return _dtype(obj)
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return {"scalar_type": _dtype(np.dtype(obj))}
    if isinstance(obj, (np.longdouble, np.clongdouble)):  # by value: their padding is noise
        parts = [np.format_float_positional(part, unique=True) for part in (obj.real, obj.imag)]
        return {"scalar": _dtype(obj.dtype), "exact": type(obj) is obj.dtype.type, "value": parts}
    if isinstance(obj, np.generic):
        return {"scalar": _dtype(obj.dtype), "exact": type(obj) is obj.dtype.type,
                "bytes": obj.tobytes().hex()}
    if isinstance(obj, np.ndarray):
        described = {"ndarray": type(obj).__name__, "dtype": _dtype(obj.dtype),
                     "shape": list(obj.shape)}
        if obj.dtype.hasobject:
            return {**described, "items": describe(obj.tolist())}
        return {**described, "bytes": obj.tobytes().hex()}
    if isinstance(obj, np.random.Generator):
        return {"Generator": describe(obj.bit_generator.state),
                "draws": describe([obj.integers(0, 2**62, 3).tolist(), obj.standard_normal(2)])}
    if isinstance(obj, np.random.RandomState):
        return {"RandomState": describe(obj.get_state(legacy=False)),
                "draws": describe([obj.randint(0, 2**31, 3).tolist(), obj.standard_normal(2)])}
    if isinstance(obj, np.random.SeedSequence):
        return {"SeedSequence": describe([obj.entropy, obj.spawn_key, obj.pool_size,
                                          obj.n_children_spawned, obj.generate_state(4)])}
    if isinstance(obj, np.random.BitGenerator):
        return {"BitGenerator": describe(obj.state), "draws": describe(obj.random_raw(3))}
    raise TypeError(f"no description for {type(obj)}")


def _dtype(dtype: np.dtype) -> dict[str, Any]:
    fields = None
    if dtype.names is not None:
        fields = [[name, *(describe(part) for part in dtype.fields[name])] for name in dtype.names]
    return {
        "str": dtype.str, "itemsize": dtype.itemsize, "alignment": dtype.alignment,
        "aligned_struct": bool(dtype.isalignedstruct), "flags": dtype.flags & 0xFF,
        "fields": fields, "subdtype": describe(dtype.subdtype) if dtype.subdtype else None,
        "metadata": describe(dict(dtype.metadata)) if dtype.metadata else None,
    }


# ---------------------------------------------------------------- writers and readers


def write_ours(folder: str) -> dict[str, Any]:
    from luigi_checkpoint import storage

    written = {}
    for protocol in PROTOCOLS:
        for case, state in cases().items():
            name = f"{case}-p{protocol}.ckpt"
            storage.dump(state, os.path.join(folder, name), protocol=protocol)
            written[name] = describe(state)
    return written


def write_native(folder: str) -> dict[str, Any]:
    from luigi_checkpoint.storage.archive import Frozen, write_frozen
    from luigi_checkpoint.storage._externalize import externalizable

    if __package__:
        from .helpers_archive import pickle_with_ids
    else:  # run as a script from tests/
        from helpers_archive import pickle_with_ids

    written = {}
    for case, state in cases().items():
        arrays: dict[int, tuple[str, np.ndarray]] = {}

        def array_ids(value: Any) -> str | None:
            if not externalizable(value):
                return None
            name, _ = arrays.setdefault(id(value), (f"array_{len(arrays)}", value))
            return f"ndarray.{name}"

        data = pickle_with_ids(state, array_ids, protocol=pickle.HIGHEST_PROTOCOL)
        name = f"{case}-native.ckpt"
        with open(os.path.join(folder, name), "wb") as f:
            write_frozen(Frozen(data, tuple(arrays.values()), pickle.HIGHEST_PROTOCOL), f)
        written[name] = describe(state)
    return written


def write_theano(folder: str) -> dict[str, Any]:
    from theano.misc import pkl_utils

    written = {}
    for protocol in PROTOCOLS:
        for case, state in cases().items():
            name = f"{case}-theano-p{protocol}.zip"
            with open(os.path.join(folder, name), "wb") as f:
                pkl_utils.dump(state, f, protocol=protocol)
            written[name] = describe(state)
    return written


def read_ours(folder: str) -> dict[str, Any]:
    from luigi_checkpoint import storage

    def load(path: str) -> Any:
        return storage.load(path, unsafe=os.path.basename(path).startswith(PICKLED_MEMBERS))

    return _read(folder, load)


def read_theano(folder: str) -> dict[str, Any]:
    from theano.misc import pkl_utils

    def load(path: str) -> Any:
        with open(path, "rb") as f:
            return pkl_utils.load(f)

    return _read(folder, load)


def _read(folder: str, load: Any) -> dict[str, Any]:
    read = {}
    for name in sorted(os.listdir(folder)):
        try:
            read[name] = describe(load(os.path.join(folder, name)))
        except Exception as exc:  # reported, and compared by the test
            read[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return read


def versions(folder: str) -> dict[str, Any]:
    try:
        import theano
    except ImportError:
        return {"numpy": np.__version__, "theano": None}
    return {"numpy": np.__version__, "theano": theano.__version__}


COMMANDS = {"write-ours": write_ours, "write-native": write_native, "write-theano": write_theano,
            "read-ours": read_ours, "read-theano": read_theano, "versions": versions}


if __name__ == "__main__":
    command, folder = sys.argv[1:]
    json.dump(COMMANDS[command](folder), sys.stdout)
