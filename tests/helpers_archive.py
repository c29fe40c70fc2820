"""Helpers of the archive test suites: importable classes for states, an exact
comparison of loaded states, Theano's ``pkl_utils`` reader and writer, and a
raw ZIP builder for malformed archives.

The classes live at module level so pickles can name them and ``load`` can be
told to trust them (``trusted=TRUSTED``).
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from luigi_checkpoint.storage.errors import ArchiveError

def laid_out(array: np.ndarray, how: str) -> np.ndarray:
    """``array`` in memory layout ``how``: c, fortran, transpose, step or reversed (negative strides)."""
    if array.ndim == 0 or how == "c":
        return array
    if how == "fortran":
        return np.asfortranarray(array)
    if how == "transpose":
        return array.T
    if how == "step":
        return array[::2]
    return array[::-1]  # negative strides


# ---------------------------------------------------------------- state classes


@dataclass
class Layer:
    """A dataclass holding arrays (reached through dataclass fields)."""

    W: Any
    b: Any


@dataclass(frozen=True)
class Frozen:
    """A frozen dataclass (its pickle restores ``__dict__`` directly)."""

    value: Any


@dataclass(slots=True)
class Slotted:
    """A dataclass with ``__slots__`` (its pickle state is built by dataclasses)."""

    value: Any


class Plain:
    """A plain class: arrays in ``__dict__``."""

    def __init__(self, value: Any, extra: Any = None) -> None:
        self.value = value
        self.extra = extra


class WithSlots:
    """A plain class with ``__slots__`` and no ``__dict__``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class WithState:
    """A plain class whose pickle state comes from ``__getstate__``."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.cache = "not saved"

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
        self.cache = "not saved"


class Tagged(np.ndarray):
    """An ndarray subclass: stays inside the pickle."""


TRUSTED = [Layer, Frozen, Slotted, Plain, WithSlots, WithState, Tagged]


# ------------------------------------------------------------ exact comparison


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))


def _rng_state(rng: Any) -> Any:
    if isinstance(rng, np.random.RandomState):
        return rng.get_state(legacy=False)
    return rng.bit_generator.state


class _Comparison:
    """Walks an original state and its loaded copy side by side."""

    def __init__(self) -> None:
        self.arrays: dict[int, Any] = {}
        self.loaded_ids: dict[int, int] = {}
        self.originals: list[Any] = []

    def check(self, loaded: Any, orig: Any, where: str) -> None:
        assert type(loaded) is type(orig), f"{where}: {type(loaded)} is not {type(orig)}"
        if isinstance(orig, np.ndarray):
            self.check_array(loaded, orig, where)
        elif isinstance(orig, np.generic):
            assert loaded.dtype == orig.dtype, where
            assert loaded.tobytes() == orig.tobytes(), f"{where}: {loaded!r} != {orig!r}"
        elif isinstance(orig, float):
            assert _same_float(loaded, orig), f"{where}: {loaded!r} != {orig!r}"
        elif isinstance(orig, complex):
            assert _same_float(loaded.real, orig.real), where
            assert _same_float(loaded.imag, orig.imag), where
        elif isinstance(orig, dict):
            assert list(loaded) == list(orig), f"{where}: keys {list(loaded)} != {list(orig)}"
            for key in orig:
                self.check(loaded[key], orig[key], f"{where}[{key!r}]")
        elif isinstance(orig, (list, tuple)):
            assert len(loaded) == len(orig), f"{where}: length"
            for i, (a, b) in enumerate(zip(loaded, orig)):
                self.check(a, b, f"{where}[{i}]")
        elif isinstance(orig, (np.random.Generator, np.random.RandomState)):
            self.check(_rng_state(loaded), _rng_state(orig), f"{where}.state")
        elif dataclasses.is_dataclass(orig):
            for f in dataclasses.fields(orig):
                self.check(getattr(loaded, f.name), getattr(orig, f.name), f"{where}.{f.name}")
        elif hasattr(orig, "__slots__"):
            for name in orig.__slots__:
                self.check(getattr(loaded, name), getattr(orig, name), f"{where}.{name}")
        elif hasattr(orig, "__dict__"):
            self.check(vars(loaded), vars(orig), f"{where}.__dict__")
        else:
            assert loaded == orig, f"{where}: {loaded!r} != {orig!r}"

    def check_array(self, loaded: np.ndarray, orig: np.ndarray, where: str) -> None:
        if id(orig) in self.arrays:
            assert loaded is self.arrays[id(orig)], f"{where}: shared array loaded twice"
            return
        assert id(loaded) not in self.loaded_ids, f"{where}: distinct arrays loaded as one"
        self.arrays[id(orig)] = loaded
        self.loaded_ids[id(loaded)] = id(orig)
        self.originals.append((orig, loaded))
        assert_array_exact(loaded, orig, where)


def assert_array_exact(loaded: np.ndarray, orig: np.ndarray, where: str = "array") -> None:
    """Same dtype (byte order included), shape, bytes; Fortran order kept."""
    assert loaded.dtype == orig.dtype and loaded.dtype.str == orig.dtype.str, (
        f"{where}: dtype {loaded.dtype.str} != {orig.dtype.str}"
    )
    assert loaded.shape == orig.shape, f"{where}: shape {loaded.shape} != {orig.shape}"
    assert loaded.tobytes() == orig.tobytes(), f"{where}: data differs"
    if orig.flags.f_contiguous and not orig.flags.c_contiguous:
        assert loaded.flags.f_contiguous, f"{where}: Fortran order lost"


def assert_same(loaded: Any, orig: Any) -> None:
    """Assert that ``loaded`` restores ``orig`` exactly, sharing included."""
    _Comparison().check(loaded, orig, "state")


# ---------------------------------------------------------------- Theano format


class CudaNdarray:
    """Stands for Theano's old ``CudaNdarray``: pickled as ``cuda_ndarray.<name>``."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class GpuArray:
    """Stands for ``pygpu.gpuarray.GpuArray``: pickled as ``gpuarray.<name>``."""

    def __init__(self, array: np.ndarray, context_name: str | None) -> None:
        self.array = array
        self.context_name = context_name


def theano_dump(obj: Any, file: IO[bytes] | str, *, protocol: int, compression: int) -> None:
    """What ``theano.misc.pkl_utils.dump`` writes: one member per array named
    ``array_<n>`` in the order the pickler meets them, then ``pkl``."""
    with zipfile.ZipFile(file, "w", compression, allowZip64=True) as zf:
        seen: dict[int, str] = {}

        def persistent_id(value: Any) -> str | None:
            if type(value) is np.ndarray:
                kind, array, prefix = "ndarray", value, b""
            elif isinstance(value, CudaNdarray):
                kind, array, prefix = "cuda_ndarray", value.array, b""
            elif isinstance(value, GpuArray):
                kind, array = "gpuarray", value.array
                prefix = pickle.dumps(value.context_name, 2)
            else:
                return None
            if id(value) not in seen:
                name = f"array_{len(seen)}"
                member = io.BytesIO(prefix)
                member.seek(0, io.SEEK_END)
                np.lib.format.write_array(member, array)
                zf.writestr(name, member.getvalue())
                seen[id(value)] = f"{kind}.{name}"
            return seen[id(value)]

        zf.writestr("pkl", pickle_with_ids(obj, persistent_id, protocol))


def theano_load(file: IO[bytes] | str) -> Any:
    """What ``theano.misc.pkl_utils.load`` does (with ``unpickle_gpu_on_cpu``)."""
    with zipfile.ZipFile(file, "r") as zf:
        cache: dict[str, Any] = {}

        def persistent_load(persid: str) -> Any:
            array_type, name = persid.split(".")
            if name not in cache:
                with zf.open(name) as f:
                    if array_type == "gpuarray":
                        pickle.load(f)
                    cache[name] = np.lib.format.read_array(f)
            return cache[name]

        return _HookUnpickler(io.BytesIO(zf.open("pkl").read()), persistent_load).load()


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as an NPY stream written by numpy itself."""
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=True)
    return out.getvalue()


def npy_header(descr: str, shape: tuple[int, ...], fortran_order: bool = False) -> bytes:
    """An NPY 1.0 header claiming ``descr`` and ``shape`` (no data)."""
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran_order, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


class _HookPickler(pickle.Pickler):
    """A pickler whose ``persistent_id`` is ``hook`` (Python 3.13 refuses
    assigning the hook to an instance of the C pickler)."""

    def __init__(self, file: IO[bytes], protocol: int, hook: Callable[[Any], Any]) -> None:
        super().__init__(file, protocol=protocol)
        self._hook = hook

    def persistent_id(self, obj: Any) -> Any:
        return self._hook(obj)


class _HookUnpickler(pickle.Unpickler):
    """An unpickler whose ``persistent_load`` is ``hook``."""

    def __init__(self, file: IO[bytes], hook: Callable[[Any], Any]) -> None:
        super().__init__(file)
        self._hook = hook

    def persistent_load(self, pid: Any) -> Any:
        return self._hook(pid)


def pickle_with_ids(obj: Any, ids: Callable[[Any], str | None], protocol: int = 4) -> bytes:
    """Pickle ``obj`` with a ``persistent_id`` hook."""
    data = io.BytesIO()
    _HookPickler(data, protocol, ids).dump(obj)
    return data.getvalue()


class Ref:
    """A placeholder pickled as the persistent id ``pid``."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


def ref_ids(value: Any) -> Any:
    """``persistent_id`` hook that turns :class:`Ref` into its id."""
    return value.pid if isinstance(value, Ref) else None


# -------------------------------------------------------------- raw ZIP builder


@dataclass(frozen=True)
class RawMember:
    """One member of a hand-built ZIP; the declared fields may lie."""

    name: str
    data: bytes
    deflate: bool = False
    crc: int | None = None
    declared_size: int | None = None
    payload: bytes | None = None  # the bytes stored, if not ``data`` (compressed)


def build_zip(members: list[RawMember]) -> bytes:
    """A ZIP archive whose local headers and central directory say what the
    members declare (ZIP64 extra fields when a declared size needs them)."""
    out = io.BytesIO()
    central = []
    for m in members:
        payload = m.payload if m.payload is not None else deflate(m.data) if m.deflate else m.data
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        size = len(m.data) if m.declared_size is None else m.declared_size
        method = 8 if m.deflate else 0
        name = m.name.encode()
        zip64 = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, len(payload)) if zip64 else b""
        small = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (len(payload), size)
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, method,
                              0, 0x21, crc, *small, len(name), len(extra)))
        out.write(name + extra + payload)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45 if zip64 else 20,
                                   0, method, 0, 0x21, crc, *small, len(name), len(extra),
                                   0, 0, 0, 0, offset) + name + extra)
    cd_offset = out.tell()
    cd = b"".join(central)
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central),
                          len(cd), cd_offset, 0))
    return out.getvalue()


def deflate(data: bytes) -> bytes:
    """A raw DEFLATE stream of ``data`` (as a ZIP member stores it)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def deflate_then_zeros(prefix: bytes, mib: int) -> bytes:
    """A raw DEFLATE stream of ``prefix`` followed by ``mib`` MiB of zeros
    (ratio ~1000:1), built in the time of 2 MiB: a sync-flushed block of
    zeros is repeated; its back references reach only zeros."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix + zeros) + c.flush(zlib.Z_SYNC_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_SYNC_FLUSH)
    return head + block * (mib - 1) + c.flush()


def assert_names_archive(exc: ArchiveError, *names: str) -> None:
    """The error message names the archive (in one of the given spellings)."""
    message = str(exc)
    assert any(n in message for n in names), f"{message!r} names none of {names}"
    assert len(message) > min(len(n) for n in names) + 8, f"{message!r} names no problem"
