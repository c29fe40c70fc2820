"""Safe unpickling: data loads by default, code-execution gadgets never run."""

from __future__ import annotations

import collections
import copyreg
import datetime
import functools
import importlib
import io
import operator
import os
import pickle
import random
import shlex
import subprocess
import sys
import tracemalloc
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage.checkpoints import CheckpointStore, archive_name
from luigi_checkpoint.storage.errors import (
    CheckpointError,
    CorruptPickleError,
    MissingMemberError,
    UnloadableArchiveError,
    UntrustedTypeError,
)
from luigi_checkpoint.storage._trust import Audit, audit_pickle, load_pickle, load_prefix, register_trusted

from .helpers_archive import assert_same
from .soak.families import family_archive, family_pickles
from .soak.mutations import forged_dtype_pickles, record_of_objects

PROTOCOLS = [0, 2, 4, 5]


@dataclass
class Model:
    """A user class: never trusted unless the caller says so."""

    weights: np.ndarray
    step: int


@dataclass
class RegisteredByClass:
    value: int


@dataclass
class RegisteredByName:
    value: int


class _Reduce:
    """Pickles as ``func(*args)``: how hostile pickles are written with ``pickle.dumps``.

    It is callable only so that it may stand as the ``func`` of another ``_Reduce``.
    """

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __call__(self, *args: Any) -> Any:
        raise NotImplementedError("only pickled, never called")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _p0_call(module: str, name: str, arg: str) -> bytes:
    """Protocol 0 text: ``module.name(arg)`` through GLOBAL and REDUCE."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def _short_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


# ---------------------------------------------------------------- data loads


def _state() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    rng.random(3)
    return {
        "arrays": [np.arange(12, dtype="<i4").reshape(3, 4), np.arange(4, dtype="<u2"),
                   np.arange(6.0).reshape(2, 3).copy(order="F")],
        "structured": np.array([(1, 2.5)], dtype=[("a", "<i2"), ("b", ">f4")]),
        "strings": [np.array(["ab", "c"], dtype="U3"),
                    np.array(["x", "yz"], dtype=np.dtypes.StringDType())],
        "times": np.array(["2020-01-01", "2021-06-30"], dtype="M8[D]"),
        "scalars": (np.float64(1.5), np.int8(-3), np.complex64(1j), np.bool_(True),
                    np.datetime64("2020-01-01T10:00"), np.str_("s"), np.float16(0.5)),
        "dtypes": [np.dtype("f8"), np.float32, np.dtype([("x", "<u2", (2,))]),
                   type(np.dtype("i4"))],
        "rngs": [rng, np.random.RandomState(3)] + [
            np.random.Generator(bits(seed)) for seed, bits in enumerate(
                [np.random.MT19937, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64])],
        "collections": [collections.OrderedDict(b=1, a=2), collections.deque([1, 2], maxlen=4),
                        collections.Counter("abca"), collections.defaultdict(list, k=[1])],
        "times_py": [datetime.date(2020, 1, 2), datetime.time(3, 4),
                     datetime.datetime(2020, 1, 2, 3, tzinfo=datetime.timezone.utc),
                     datetime.timedelta(days=2),
                     datetime.timezone(datetime.timedelta(hours=-3), "X")],
        "builtins": [{1, 2}, frozenset({3}), bytearray(b"\x00\xff"), b"\x80raw", slice(1, 9, 2),
                     range(5), 2j, 2**100, ..., NotImplemented, int, "text", 1.5, None, True],
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_default_allowlist_loads_training_state(protocol: int) -> None:
    state = _state()
    data = pickle.dumps(state, protocol=protocol)
    audit = audit_pickle(data)
    assert audit.untrusted == ()
    assert "numpy.dtype" in audit.globals
    assert_same(load_pickle(data, source="state.pkl"), _state())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_object_arrays_bit_generators_and_seed_sequences_load(protocol: int) -> None:
    objects = np.array([1, "x", None, [2.5]], dtype=object)
    bits, seeds = np.random.Philox(3), np.random.SeedSequence(5)
    loaded = load_pickle(pickle.dumps([objects, bits, seeds], protocol=protocol), source="o")
    assert loaded[0].dtype == object and loaded[0].tolist() == objects.tolist()
    assert loaded[1].random_raw(3).tolist() == bits.random_raw(3).tolist()
    assert loaded[2].generate_state(3).tolist() == seeds.generate_state(3).tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_user_class_is_refused_by_default_and_named(protocol: int) -> None:
    data = pickle.dumps(Model(np.ones(2), 3), protocol=protocol)
    name = f"{Model.__module__}.Model"
    with pytest.raises(UntrustedTypeError) as info:
        load_pickle(data, source="model.pkl")
    assert info.value.names == [name]
    assert "model.pkl" in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trusted_by_class_or_dotted_name_loads(protocol: int) -> None:
    data = pickle.dumps([Model(np.arange(3.0), 3)], protocol=protocol)
    for trusted in ([Model], [f"{Model.__module__}.Model"]):
        (loaded,) = load_pickle(data, source="m", trusted=trusted)
        assert isinstance(loaded, Model) and loaded.step == 3
        assert loaded.weights.tolist() == [0.0, 1.0, 2.0]


def test_register_trusted_is_process_wide() -> None:
    data = pickle.dumps([RegisteredByClass(1), RegisteredByName(2)], protocol=2)
    with pytest.raises(UntrustedTypeError) as info:
        load_pickle(data, source="r")
    assert len(info.value.names) == 2
    register_trusted(RegisteredByClass, f"{RegisteredByName.__module__}.RegisteredByName")
    assert load_pickle(data, source="r") == [RegisteredByClass(1), RegisteredByName(2)]


def test_register_trusted_rejects_what_is_not_a_dotted_name() -> None:
    with pytest.raises(ValueError, match="dotted"):
        register_trusted("Model")
    with pytest.raises(TypeError, match="list"):
        audit_pickle(pickle.dumps(1), trusted="pkg.Model")  # type: ignore[arg-type]


def test_unsafe_loads_untrusted_user_class() -> None:
    data = pickle.dumps(Model(np.arange(2.0), 9), protocol=5)
    loaded = load_pickle(data, source="m", unsafe=True)
    assert isinstance(loaded, Model) and loaded.step == 9 and loaded.weights.tolist() == [0, 1]


def test_python2_builtin_names_are_audited_as_builtins() -> None:
    data = b"c__builtin__\nset\n((lp0\nI1\naI2\natp1\nRp2\n."
    assert audit_pickle(data) == Audit(("builtins.set",), ())
    assert load_pickle(data, source="py2") == {1, 2}


@pytest.mark.parametrize("protocol", [0, 2])
def test_numpy1_core_names_load_without_deprecation_warning(protocol: int) -> None:
    data = pickle.dumps(np.arange(4.0), protocol=protocol).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_pickle(data, source="np1").tolist() == [0.0, 1.0, 2.0, 3.0]


# ------------------------------------------------------------------ renames


def _old_model_pickle(module: str, qualname: str, step: int, protocol: int,
                      monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A ``Model`` pickled by old code, where the class lived at ``module.qualname``."""
    old_class = type(qualname, (), {"__module__": module, "__qualname__": qualname})
    old = old_class()
    old.__dict__.update(weights=np.ones(2), step=step)
    with monkeypatch.context() as patch:
        for depth in range(1, module.count(".") + 2):
            name = ".".join(module.split(".")[:depth])
            patch.setitem(sys.modules, name, types.ModuleType(name))
        setattr(sys.modules[module], qualname, old_class)
        return pickle.dumps(old, protocol=protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_renamed_class_loads_with_exact_rename(
    protocol: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _old_model_pickle("old_project.models", "OldModel", 4, protocol, monkeypatch)
    new = f"{Model.__module__}.Model"
    renames = {"old_project.models.OldModel": new}
    assert new in audit_pickle(data, renames=renames).globals
    loaded = load_pickle(data, source="old", trusted=[Model], renames=renames)
    assert type(loaded) is Model and loaded.step == 4
    assert loaded.weights.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_moved_module_loads_with_prefix_rename(
    protocol: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _old_model_pickle("old_project.models", "Model", 5, protocol, monkeypatch)
    loaded = load_pickle(
        data, source="old", trusted=[Model], renames={"old_project.models": Model.__module__}
    )
    assert isinstance(loaded, Model) and loaded.step == 5


def test_renames_prefer_exact_name_then_longest_module_prefix() -> None:
    data = _p0_call("a.b.c", "Model", "x")
    assert audit_pickle(data, renames={"a": "x", "a.b": "y"}).globals == ("y.c.Model",)
    assert audit_pickle(data, renames={"a": "x", "a.b.c.Model": "z.New"}).globals == ("z.New",)
    assert audit_pickle(data, renames={"a.b.c.M": "no", "a.bb": "no"}).globals == ("a.b.c.Model",)


def test_trusted_name_that_no_longer_imports_is_a_clear_error() -> None:
    data = _p0_call("old_project.models", "Model", "x")
    with pytest.raises(UnloadableArchiveError, match="old.pkl.*old_project.models.Model.*renames"):
        load_pickle(data, source="old.pkl", trusted=["old_project.models.Model"])


# ------------------------------------------------------------ hostile input


GADGETS = {
    "posix.system": ["posix.system"],
    "eval": ["builtins.eval"],
    "exec": ["builtins.exec"],
    "getattr-import": ["builtins.__import__", "builtins.getattr"],
    "popen": ["subprocess.Popen"],
    "nested-pickle": ["_pickle.loads"],
    "partial-eval": ["builtins.eval", "functools.partial"],
    "methodcaller": ["importlib.import_module", "operator.methodcaller"],
    "attrgetter": ["importlib.import_module", "operator.attrgetter"],
    "numpy.load": ["numpy.load"],
    "reconstructor": ["subprocess.Popen"],
}
"""Gadget name -> the untrusted names its pickle must be refused for."""

HANDWRITTEN = {
    "os.system p0": ["os.system"],
    "__builtin__.eval p0": ["builtins.eval"],
    "INST p0": ["os.system"],
    "OBJ p1": ["os.system"],
    "pickle.loads p0": ["pickle.loads"],
    "memoized STACK_GLOBAL": ["os.system"],
    "text memo GET": ["os.system"],
    "LONG_BINGET": ["posix.system"],
    "decoy strings": ["os.system"],
}


def _gadgets(marker: Path, npy: Path) -> dict[str, Any]:
    """Objects whose unpickling creates ``marker``: each is real code execution."""
    cmd = f"touch {shlex.quote(str(marker))}"
    code = f"open({str(marker)!r}, 'w').close()"
    inner = pickle.dumps(_Reduce(os.system, (cmd,)), protocol=2)
    np.save(npy, np.array([_Reduce(os.system, (cmd,))], dtype=object), allow_pickle=True)
    os_module = _Reduce(importlib.import_module, ("os",))
    return {
        "posix.system": _Reduce(os.system, (cmd,)),
        "eval": _Reduce(eval, (code,)),
        "exec": _Reduce(exec, (code,)),
        "getattr-import": _Reduce(_Reduce(getattr, (_Reduce(__import__, ("os",)), "system")),
                                  (cmd,)),
        "popen": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
        "nested-pickle": _Reduce(pickle.loads, (inner,)),
        "partial-eval": _Reduce(functools.partial(eval, code), ()),
        "methodcaller": _Reduce(operator.methodcaller("system", cmd), (os_module,)),
        "attrgetter": _Reduce(_Reduce(operator.attrgetter("system"), (os_module,)), (cmd,)),
        "numpy.load": _Reduce(np.load, (str(npy), None, True)),
        "reconstructor": _Reduce(copyreg._reconstructor,
                                 (subprocess.Popen, subprocess.Popen, ["touch", str(marker)])),
    }


def _handwritten(marker: Path) -> dict[str, bytes]:
    """Streams ``pickle.dumps`` never writes, each creating ``marker`` when loaded."""
    cmd = f"touch {shlex.quote(str(marker))}"
    code = f"open({str(marker)!r}, 'w').close()"
    args = _short_str(cmd) + b"\x85R."
    return {
        "os.system p0": _p0_call("os", "system", cmd),
        "__builtin__.eval p0": _p0_call("__builtin__", "eval", code),
        "INST p0": f"(V{cmd}\nios\nsystem\n.".encode(),
        "OBJ p1": f"(cos\nsystem\nV{cmd}\no.".encode(),
        "pickle.loads p0": b"cpickle\nloads\n(c_codecs\nencode\n(V"
        + _p0_call("os", "system", cmd).replace(b"\n", b"\\u000a") + b"\nVlatin1\ntRtR.",
        "memoized STACK_GLOBAL": b"\x80\x04" + _short_str("os") + b"\x94" + _short_str("system")
        + b"\x940" + b"0h\x00h\x01\x93" + args,
        "text memo GET": b"\x80\x04Vos\np7\n0Vsystem\np8\n0g7\ng8\n\x93" + args,
        "LONG_BINGET": b"\x80\x04" + _short_str("posix") + b"r\x03\x00\x00\x000"
        + _short_str("system") + b"r\x04\x00\x00\x000j\x03\x00\x00\x00j\x04\x00\x00\x00\x93"
        + args,
        "decoy strings": b"\x80\x04" + _short_str("os") + _short_str("system") + b"("
        + _short_str("builtins") + _short_str("dict") + b"1\x93" + args,
    }


@pytest.fixture
def no_side_effects(tmp_path: Path) -> Any:
    """Yields the path a gadget would create; afterwards asserts it was not created."""
    marker = tmp_path / "pwned"
    yield marker
    assert not marker.exists()


def _refuse(data: bytes) -> list[str]:
    """Assert ``data`` is refused importing nothing, and that the audit says the same."""
    modules = set(sys.modules)
    with pytest.raises(UntrustedTypeError) as info:
        load_pickle(data, source="evil.pkl")
    assert "evil.pkl" in str(info.value)
    assert set(sys.modules) - modules == set()
    assert list(audit_pickle(data).untrusted) == info.value.names
    return info.value.names


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(GADGETS))
def test_hostile_gadget_is_refused_without_side_effect(
    name: str, protocol: int, no_side_effects: Path, tmp_path: Path
) -> None:
    data = pickle.dumps(_gadgets(no_side_effects, tmp_path / "evil.npy")[name], protocol=protocol)
    # protocols 0-2 write Python 2 names: _pickle.loads is written as pickle.loads
    expected = [n.removeprefix("_") if protocol < 3 else n for n in GADGETS[name]]
    assert _refuse(data) == expected


@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_handwritten_hostile_stream_is_refused_without_side_effect(
    name: str, no_side_effects: Path
) -> None:
    assert _refuse(_handwritten(no_side_effects)[name]) == HANDWRITTEN[name]


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_gadgets_really_execute_when_unsafe(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_gadgets(marker, tmp_path / "evil.npy")[name], protocol=4)
    result = load_pickle(data, source="evil.pkl", unsafe=True)
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_handwritten_streams_really_execute_with_plain_pickle(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(_handwritten(marker)[name])
    assert marker.exists()


@pytest.mark.parametrize(
    "dotted",
    ["builtins.getattr", "builtins.compile", "builtins.open", "builtins.globals", "builtins.vars",
     "builtins.__import__", "builtins.type", "builtins.breakpoint", "_pickle.loads",
     "importlib.import_module", "numpy.lib.npyio.load", "numpy.load", "numpy.f2py.compile",
     "numpy.distutils.exec_command.exec_command",
     "numpy.testing._private.extbuild.build_and_import_extension", "numpy.ctypeslib.load_library",
     "ctypes.CDLL", "shutil.rmtree", "copyreg.add_extension",
     "numpy.random._pickle.BitGenerators"],
)
def test_dangerous_names_are_not_trusted(dotted: str, no_side_effects: Path) -> None:
    module, _, name = dotted.rpartition(".")
    assert _refuse(_p0_call(module, name, "x")) == [dotted]


def test_all_untrusted_names_are_listed_in_one_error(no_side_effects: Path) -> None:
    data = pickle.dumps(
        [_Reduce(os.system, ("true",)), _Reduce(functools.partial(eval, "1"), ()),
         _Reduce(subprocess.Popen, (["true"],)), np.arange(3)],
        protocol=4,
    )
    assert _refuse(data) == ["builtins.eval", "functools.partial", "posix.system",
                             "subprocess.Popen"]


def test_extension_codes_are_refused_registered_or_not(no_side_effects: Path) -> None:
    cmd = f"touch {shlex.quote(str(no_side_effects))}"
    ext1 = b"\x80\x02\x82\xf1" + _short_str(cmd) + b"\x85R."
    ext2 = b"\x80\x02\x83\xf0\xf0" + b")\x85R."
    copyreg.add_extension("os", "system", 0xF1)
    copyreg.add_extension("builtins", "dict", 0xF0F0)
    try:
        for data in (ext1, ext2, ext1):  # the unpickler's process-wide cache never answers
            for reader in (load_pickle, audit_pickle):
                with pytest.raises(CorruptPickleError, match="evil.pkl: .*extension code"):
                    reader(data, source="evil.pkl")
    finally:
        copyreg.remove_extension("os", "system", 0xF1)
        copyreg.remove_extension("builtins", "dict", 0xF0F0)


def test_stack_global_with_computed_operands_resolves_like_any_other(no_side_effects: Path) -> None:
    str_os = _short_str("builtins") + _short_str("str") + b"\x93" + _short_str("os") + b"\x85R"
    data = b"\x80\x04" + str_os + _short_str("system") + b"\x93" + _short_str("true") + b"\x85R."
    assert _refuse(data) == ["os.system"]


@pytest.mark.parametrize("via_memo", [False, True])
def test_setting_attributes_on_a_global_is_refused(via_memo: bool, no_side_effects: Path) -> None:
    counter = b"\x80\x02ccollections\nCounter\n" + (b"q\x000h\x00" if via_memo else b"")
    data = counter + b"N}X\x05\x00\x00\x00pwnedK\x01s\x86b."
    for reader in (load_pickle, audit_pickle):
        with pytest.raises(CorruptPickleError, match="evil.pkl: .*BUILD of the global collections.Counter"):
            reader(data, source="evil.pkl")
    assert not hasattr(collections.Counter, "pwned")


@pytest.mark.parametrize("build", [b"N}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b",
                                   b"}X\x05\x00\x00\x00pwnedK\x01sb"])
def test_setting_attributes_on_a_trusted_class_or_function_is_refused(build: bytes) -> None:
    for name in ("Model", "_called"):
        data = f"\x80\x02c{__name__}\n{name}\n".encode("latin1") + build + b"."
        with pytest.raises(CorruptPickleError, match=f"BUILD of the global {__name__}.{name}"):
            load_pickle(data, source="evil.pkl", trusted=[f"{__name__}.{name}"])
    assert not hasattr(Model, "pwned") and _called.__defaults__ is None


# ----------------------------------------------------------- malformed input


def test_every_truncation_is_a_corrupt_pickle() -> None:
    data = pickle.dumps({"a": np.arange(3), "b": [1.5, "x"], "r": np.random.default_rng(1)}, 5)
    for end in range(len(data)):
        with pytest.raises(CorruptPickleError, match="part.pkl"):
            load_pickle(data[:end], source="part.pkl")


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"\x80\x05\x95\xff\xff\xff\xff\x00\x00\x00\x00",
        b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\x00\x00abc.",
        b"\x80\x04h\x05.",
        b"\x80\x02cbuiltins\n.",
        b"\x80\x02cbuiltins\nint\nK\x01R.",
        b"\x80\x02cbuiltins\ncomplex\nX\x01\x00\x00\x00x\x85R.",
        b"\x80\x02cnumpy\nndarray\nK\x01\x85R(K\x01K\x05\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8"
        b"\x85RK\x00C\x03abctb.",
        b"\x80\x02cnumpy._core.multiarray\n_reconstruct\nK\x01\x85R.",
        b"\x80\x04\x93.",
        b"\x80\x041.",
        b"\x80\x04Pid\n.",
        b"\x80\x04\x97.",
        b"\x80\x04(]\x94a.",
        b"\x80\x63N.",
    ],
    ids=["garbage", "lying frame", "lying bytes8", "missing memo", "bad global", "bad reduce",
         "bad complex", "bad array state", "bad reconstruct", "stack underflow", "pop mark",
         "persid without loader", "out-of-band buffer", "append across mark",
         "protocol 99"],
)
def test_malformed_stream_is_a_corrupt_pickle_naming_the_source(data: bytes) -> None:
    with pytest.raises(CorruptPickleError, match="bad.pkl"):
        load_pickle(data, source="bad.pkl")
    with pytest.raises(CorruptPickleError, match="bad.pkl"):
        load_pickle(data, source="bad.pkl", unsafe=True)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_mutated_pickles_only_raise_checkpoint_errors(protocol: int) -> None:
    state = {"w": np.arange(6.0).reshape(2, 3), "step": 3, "rng": np.random.default_rng(1),
             "seen": collections.OrderedDict(a={1.5, "x"}), "at": datetime.date(2020, 1, 2)}
    valid = pickle.dumps(state, protocol=protocol)
    rng = random.Random(protocol)
    for _ in range(200):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at:at + 1] = rng.choice([bytes([rng.randrange(256)]), b"", data[at:at + 9]])
        try:
            load_pickle(bytes(data), source="fuzz.pkl")
        except (CorruptPickleError, UntrustedTypeError) as exc:
            assert "fuzz.pkl" in str(exc)


@pytest.mark.parametrize("put", [b"r\x00\x00\x00\x40", b"p1073741824\n"])
def test_memo_index_beyond_the_stream_is_refused_before_allocating(put: bytes) -> None:
    data = b"\x80\x04N" + put + b"."
    with pytest.raises(CorruptPickleError, match="bomb.pkl.*beyond the size"):
        audit_pickle(data, source="bomb.pkl")
    with pytest.raises(CorruptPickleError, match="bomb.pkl"):
        load_pickle(data, source="bomb.pkl")


def _g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _called(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


GIGA = b"\x8a\x08" + (10**9).to_bytes(8, "little")  # LONG1 10**9
RANGE = _called(_g("builtins", "range"), GIGA)
RECONSTRUCT, NDARRAY = _g("numpy.core.multiarray", "_reconstruct"), _g("numpy", "ndarray")
ASKING = {
    "bytes(10**9)": _called(_g("builtins", "bytes"), GIGA),
    "INST bytearray(10**9)": b"(I1000000000\ni__builtin__\nbytearray\n",
    "list(range(10**9))": _called(_g("builtins", "list"), RANGE),
    "NEWOBJ tuple(range(10**9))": _g("builtins", "tuple") + RANGE + b"\x85\x81",
    "deque(range(10**9))": _called(_g("collections", "deque"), RANGE),
    "copyreg.__newobj__(bytearray, 10**9)": _called(
        _g("copyreg", "__newobj__"), _g("builtins", "bytearray"), GIGA),
    "copyreg._reconstructor(list, list, range)": _called(
        _g("copyreg", "_reconstructor"), _g("builtins", "list"), _g("builtins", "list"), RANGE),
    "numpy.void(10**9)": _called(_g("numpy", "void"), GIGA),
    "numpy.float64(range(10**9))": _called(_g("numpy", "float64"), RANGE),
    "bytes(empty array of 10**8 float64)": _called(_g("builtins", "bytes"), _called(
        RECONSTRUCT, NDARRAY, b"J\x00\xe1\xf5\x05\x85", b"C\x01d")),
    "scalar of a 100 MB dtype without data": _called(
        _g("numpy.core.multiarray", "scalar"),
        _called(_g("numpy", "dtype"), b"X\n\x00\x00\x00V100000000")),
    "random ctor calling bytes(10**9)": _called(
        _g("numpy.random._pickle", "__generator_ctor"), GIGA, _g("builtins", "bytes")),
    "_codecs.encode doubling with hex": _called(
        _g("_codecs", "encode"), b"X\x01\x00\x00\x00a", b"X\x03\x00\x00\x00hex"),
    "object array of 10**6 items from an empty list": _called(
        RECONSTRUCT, NDARRAY, b"K\x00\x85C\x01b") + b"(K\x01J@B\x0f\x00\x85"
        + _called(_g("numpy", "dtype"), b"X\x02\x00\x00\x00O8") + b"\x89]tb",
    "bytearray copies of one memoized bytes": b"B\x00\x00\x01\x00" + b"x" * 65536 + b"q\x01("
        + _called(_g("builtins", "bytearray"), b"h\x01") * 200 + b"l",
}


ASKING["one record of 10**8 objects from a one-item list"] = record_of_objects(10**8)


def test_the_record_pickle_edit_keeps_a_loadable_stream() -> None:
    loaded = load_pickle(record_of_objects(3), source="r")
    assert loaded.dtype == np.dtype([("f", "O", (3,))])
    assert repr(loaded.tolist()) == repr([(np.zeros(3, dtype=object),)])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_arrays_filled_from_lists_load(protocol: int) -> None:
    state = [
        np.array([None, "a", 1.5, [1, 2]], dtype=object),
        np.empty((2, 3), dtype=object),
        np.zeros(3, dtype=[("x", "f8"), ("o", "O")]),
        np.zeros(2, dtype=np.dtype([("i", "u1"), ("o", "O")], align=True)),
        np.zeros(2, dtype=np.dtype({"names": ["o"], "formats": ["O"], "offsets": [0], "itemsize": 64})),
        np.zeros(2, dtype=[("f", "O", (2, 3)), ("g", "i4")]),
        np.array(["a", "bc" * 50], dtype=np.dtypes.StringDType()),
    ]
    state[2]["o"] = ["p", None, 3]
    loaded = load_pickle(pickle.dumps(state, protocol=protocol), source="s")
    assert [a.dtype for a in loaded] == [a.dtype for a in state]
    assert [repr(a.tolist()) for a in loaded] == [repr(a.tolist()) for a in state]


FORGED = forged_dtype_pickles()


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_dtypes_are_refused(name: str) -> None:
    with pytest.raises(CorruptPickleError, match="forged.pkl: .*dtype"):
        load_pickle(FORGED[name], source="forged.pkl")


def test_a_dtype_rebuilt_with_copy_false_changes_only_its_own_copy() -> None:
    data = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x89\x87R(K\x03X\x01\x00\x00\x00>NNN"
            b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
    assert load_pickle(data, source="f8.pkl") == np.dtype(">f8")
    assert np.dtype("f8").byteorder == "="


def test_a_dtype_built_twice_is_refused() -> None:
    state = pickle.dumps(np.dtype([("x", "f8")]), protocol=2)
    twice = state[:-1] + state[state.index(b"R") + 3:-1] + b"."  # BUILD with the same state again
    with pytest.raises(CorruptPickleError, match="twice.pkl: .*built again or after use"):
        audit_pickle(twice, source="twice.pkl")


def test_an_array_filled_from_a_list_needs_a_dtype_of_stated_size() -> None:
    data = _called(RECONSTRUCT, NDARRAY, b"K\x00\x85C\x01b") + b"(K\x01K\x01\x85" + _called(
        _g("numpy", "dtype"), b"X\x0b\x00\x00\x00(1000000,)O") + b"\x89]Natb."
    with pytest.raises(CorruptPickleError, match="s.pkl: malformed pickle: numpy.dtype of"):
        load_pickle(b"\x80\x02" + data, source="s.pkl")


@pytest.mark.parametrize("name", sorted(ASKING))
def test_trusted_callables_asked_for_sizes_are_refused_before_allocating(name: str) -> None:
    data = b"\x80\x02" + ASKING[name] + b"."
    tracemalloc.start()
    try:
        with pytest.raises(CorruptPickleError, match="big.pkl: malformed pickle: "):
            load_pickle(data, source="big.pkl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_empty_and_shared_data_loads(protocol: int) -> None:
    shared = bytearray(b"a" * 300)
    state = [np.empty(0), np.empty((0, 5), order="F"), np.array(2.5),
             np.empty((2, 0), dtype=object),
             b"", bytearray(), b"a", b"a", shared, shared, bytearray(b"b"), bytearray(b"b"),
             collections.deque(), set(), frozenset(), collections.Counter(), range(10**12)]
    assert_same(load_pickle(pickle.dumps(state, protocol=protocol), source="s"), state)


def test_persistent_ids_go_to_the_callers_loader() -> None:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> str | None:
            return f"ndarray.{id(obj)}" if isinstance(obj, np.ndarray) else None

    arr = np.arange(3)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": arr})
    table = {f"ndarray.{id(arr)}": arr}
    loaded = load_pickle(buf.getvalue(), source="p", persistent_load=table.__getitem__)
    assert loaded["w"] is arr

    def missing(pid: Any) -> Any:
        raise MissingMemberError(f"p: no member for {pid}")

    with pytest.raises(MissingMemberError):
        load_pickle(buf.getvalue(), source="p", persistent_load=missing)
    with pytest.raises(CorruptPickleError, match="KeyError"):
        load_pickle(buf.getvalue(), source="p", persistent_load={}.__getitem__)


def test_streams_nested_deeper_than_any_pickler_writes_load_in_linear_time() -> None:
    depth = 100_000
    deep = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    loaded, levels = load_pickle(deep, source="deep.pkl"), 0
    while loaded:
        loaded, levels = loaded[0], levels + 1
    assert levels == depth - 1
    nested: list[Any] = [np.dtype("f4")]
    for _ in range(200):
        nested = [nested]
    assert load_pickle(pickle.dumps(nested, protocol=5), source="ok.pkl") == nested


# ------------------------------------------- the five families of trusted-name attacks

FAMILIES = family_pickles(random.Random(13))
FAMILY_NAMES = sorted({family for family, _ in FAMILIES.values()})


def _family(name: str) -> dict[str, bytes]:
    return {label: data for label, (family, data) in FAMILIES.items() if family == name}


def _family_archive(path: Path, family: str, data: bytes, manifest: bool = True) -> Path:
    path.write_bytes(family_archive(family, data, manifest=manifest))
    return path


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_is_refused_in_bounded_memory(family: str) -> None:
    member = np.zeros(2)
    streams = _family(family)
    assert len(streams) >= 5
    for label, data in streams.items():
        tracemalloc.start()
        try:
            with pytest.raises(CorruptPickleError, match="f.pkl"):
                if family == "gpuarray prefix":
                    load_prefix(data, source="f.pkl")
                else:
                    load_pickle(data, source="f.pkl", persistent_load=lambda pid: member)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20, label
    assert not hasattr(collections.Counter, "pwned") and copyreg._reconstructor.__defaults__ is None


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_is_refused_through_every_surface(family: str, tmp_path: Path) -> None:
    from luigi_checkpoint import storage

    for index, (label, data) in enumerate(sorted(_family(family).items())[::3]):
        run = tmp_path / f"run-{index}"
        run.mkdir()
        path = _family_archive(run / archive_name(1), family, data)
        with pytest.raises(CheckpointError):
            storage.load(path)
        with pytest.raises(CheckpointError):
            CheckpointStore(str(run)).restore()
        if family == "gpuarray prefix":
            path = _family_archive(run / "theano.zip", family, data, manifest=False)
            with pytest.raises(CheckpointError, match="gpuarray context name"):
                storage.read_arrays(path)
            assert storage.open_archive(path).verify(), label
            with pytest.raises(CheckpointError, match="gpuarray context name"):
                storage.load(path)
        else:
            assert storage.read_arrays(path)["a"].tolist() == [0.0, 0.0]
        if family not in ("gpuarray prefix", "build on member"):  # the audit reads no member
            with pytest.raises(CorruptPickleError):  # the audit is the load's own pass
                storage.audit(path)
    cli = [sys.executable, "-m", "luigi_checkpoint.storage.cli"]
    verify = subprocess.run([*cli, "verify", str(path)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == (1 if family == "gpuarray prefix" else 0), verify.stdout + verify.stderr
    audit = subprocess.run([*cli, "audit", str(path)], capture_output=True, text=True, timeout=120)
    expected = 0 if family in ("gpuarray prefix", "build on member") else 1
    assert audit.returncode == expected and "Traceback" not in audit.stderr, audit.stdout + audit.stderr


def test_a_restored_generator_is_valid_or_refused() -> None:
    """Every random state numpy can hold loads and draws; every other is refused."""
    rng = random.Random(5)
    for name in ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64"):
        for _ in range(20):
            bits = getattr(np.random, name)(rng.randrange(2**32))
            state = bits.state
            if "pos" in state["state"]:
                state["state"]["pos"] = rng.randrange(0, 625)
            if "has_uint32" in state:
                state["has_uint32"], state["uinteger"] = rng.randrange(2), rng.randrange(2**32)
            bits.state = state
            generator = np.random.Generator(bits)
            loaded = load_pickle(pickle.dumps(generator), source="g.pkl")
            assert loaded.random(3).tolist() == generator.random(3).tolist()


def test_a_huge_or_deep_argument_makes_a_short_message() -> None:
    depth = 50_000
    deep = b"]" * depth + b"a" * (depth - 1)
    for argument in (deep, b"(" + b"N" * 1_000_000 + b"l"):
        data = b"\x80\x02cnumpy\ndtype\n" + argument + b"\x85R."
        with pytest.raises(CorruptPickleError, match="numpy.dtype of") as info:
            load_pickle(data, source="m.pkl")
        assert len(str(info.value)) < 300
