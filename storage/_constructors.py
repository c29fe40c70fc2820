"""What a pickle's globals become when we load it: constructors of ours.

The loader (:mod:`luigi_checkpoint.storage._trust`) resolves every global a
stream names to a :class:`Rule`: its value (what the global is when the stream
only stores it), what calling it does (``REDUCE``, ``OBJ``, ``INST``) and what
making an instance does (``NEWOBJ``, ``NEWOBJ_EX``, ``copyreg.__newobj__``).
The unpickler sees a *maker* standing for the global, a class made for this
load whose call and ``__new__`` run the rule, whatever opcode reaches them, and
which refuses ``BUILD``: a stream cannot set attributes of a global.

Our constructors validate their arguments completely before anything else sees
them, and charge what they copy to a :class:`Load`'s budget, which follows the
size of the stream (``BUDGET_PER_BYTE`` units per byte: an item or a byte
copied, a byte allocated): a small stream cannot ask for gigabytes, whichever
path it takes. What the stream spells out itself (lists, dicts, strings) is
bounded by its size already.

Objects that numpy finishes with ``BUILD`` (dtypes, arrays, bit generators,
Generators, RandomStates, seed sequences) are :class:`Pending` while the stream
runs: their ``__setstate__`` validates the state against a schema and builds
the real object; :mod:`luigi_checkpoint.storage._settle` puts the real objects
in their place once the stream ends. numpy's own reconstructors never see
stream data we have not checked, and a ``BUILD`` never reaches a real numpy
object (an array of a member included): numpy's ``__setstate__`` of an array
needs a real dtype, which only our constructors hold.

This module holds that machinery and the builtin vocabulary: containers,
scalars, ``collections``, ``datetime`` and the ``copyreg`` helpers.
"""

from __future__ import annotations

import _codecs
import collections
import copyreg
import datetime
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError, CorruptPickleError, UnloadableArchiveError

__all__ = ["BUDGET_PER_BYTE", "BUILTIN_RULES", "Load", "Pending", "Placeholder", "Rule", "is_made",
           "brief", "make_maker", "rule_of", "settled", "unbuildable"]

BUDGET_PER_BYTE = 16
"""Units (items copied, bytes allocated) a load may spend per byte of stream:
an object takes at least one byte of stream and eight of memory."""


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 60


def brief(value: Any) -> str:
    """A bounded repr of a stream value, for messages (a stream's objects can be huge or deep)."""
    return _BRIEF.repr(value)


class Placeholder:
    """Stands for what a refused global or an unread member would have made,
    so that one pass finds every untrusted name; accepts any filling."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return Placeholder()


def holds_placeholder(value: Any, depth: int = 4) -> bool:
    """Whether ``value`` is, or shallowly holds, a :class:`Placeholder`."""
    if type(value) is Placeholder:
        return True
    if depth and type(value) in (tuple, list):
        return any(holds_placeholder(item, depth - 1) for item in value)
    if depth and type(value) is dict:
        return any(holds_placeholder(item, depth - 1) for item in value.values())
    return False


class Load:
    """One load's state: its source, budget, the objects to settle afterwards."""

    def __init__(self, source: str, size: int, *, unsafe: bool = False) -> None:
        self.source, self.unsafe = source, unsafe
        self.budget = BUDGET_PER_BYTE * max(size, 1024)
        self.made = 0
        self.refused: set[str] = set()
        self.trusted_types: set[type] = set()

    def corrupt(self, problem: str) -> CorruptPickleError:
        return CorruptPickleError(f"{self.source}: malformed pickle: {problem}")

    def charge(self, units: int, what: str) -> None:
        """Spend ``units`` of the budget on ``what``, or refuse the stream."""
        self.budget -= units
        if self.budget < 0:
            raise self.corrupt(
                f"{what} asks for more than {BUDGET_PER_BYTE} units per byte of the stream "
                "(no pickler writes that; a small stream must not make us allocate gigabytes)"
            )

    def track(self, obj: Any) -> Any:
        """Count ``obj``, a maker or pending object: the result may hold it."""
        self.made += 1
        return obj


class Pending:
    """An object numpy finishes with ``BUILD``, while the stream runs."""

    __slots__ = ("load",)

    def __init__(self, load: Load) -> None:
        self.load = load
        load.track(self)

    def value(self) -> Any:
        """The real object (validated); raises CorruptPickleError if it cannot be."""
        raise NotImplementedError


@dataclass(frozen=True)
class Rule:
    """What a global is (``value``), what calling it does (``call``: None
    refuses) and what ``NEWOBJ`` of it does (``new``); ``caller_trusted`` for
    the caller's own classes, whose exceptions mean the archive is unloadable."""

    value: Any
    call: Callable[..., Any] | None = None
    new: Callable[..., Any] | None = None
    caller_trusted: bool = False


class _Maker(type):
    """Metaclass of the makers: calling a maker runs its rule's ``call``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._run("call", args, kwargs)  # type: ignore[attr-defined]


def unbuildable(source: str, name: str, exc: Exception) -> UnloadableArchiveError:
    """The error for a caller-trusted class ``name`` that refused its state."""
    return UnloadableArchiveError(
        f"{source}: cannot build {name}: {type(exc).__name__}: {exc} (the archive is intact; the "
        "class no longer accepts the state it saved: make it accept the old state, for example a "
        "default in __setstate__, or run the code that wrote it)"
    )


def make_maker(name: str, rule: Rule, load: Load) -> type:
    """The class the unpickler gets for global ``name`` in ``load``."""

    def run(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        action = rule.call if kind == "call" else rule.new
        if any(type(arg) is Placeholder or getattr(rule_of(arg), "value", None) is Placeholder
               for arg in (*args, *kwargs.values())):
            return Placeholder()
        if action is None:
            how = "called" if kind == "call" else "instantiated by NEWOBJ"
            raise load.corrupt(f"{name} {how} (no pickler writes that)")
        try:
            return action(load, *args, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:
            if rule.caller_trusted:
                raise unbuildable(load.source, name, exc) from exc
            raise load.corrupt(f"{name}: {type(exc).__name__}: {exc}") from exc

    def new(cls: type, *args: Any, **kwargs: Any) -> Any:
        return run("new", args, kwargs)

    def refuse_build(state: Any) -> None:
        raise load.corrupt(f"BUILD of the global {name} (it would set its attributes for the "
                           "whole process)")

    module, _, qualname = name.rpartition(".")
    namespace = {"__slots__": (), "__module__": module, "__qualname__": qualname, "__new__": new,
                 "__setstate__": staticmethod(refuse_build), "_run": staticmethod(run),
                 "rule": rule}
    return load.track(_Maker(qualname, (), namespace))


def settled(value: Any) -> Any:
    """A maker's or pending object's real value (others as they are)."""
    if isinstance(value, Pending):
        return value.value()
    if isinstance(value, _Maker):
        return value.rule.value
    return value


def rule_of(value: Any) -> Rule | None:
    """The rule of a maker (None for anything else)."""
    return value.rule if isinstance(value, _Maker) else None


def is_made(value: Any) -> bool:
    """Whether ``value`` is a maker or a pending object (to settle)."""
    return isinstance(value, Pending) or isinstance(value, _Maker)


# ------------------------------------------------------------------ builtins

_SIZED = (list, tuple, set, frozenset, dict, str, bytes, bytearray, range, collections.deque)
_SCALARS = (int, float, bool, complex, type(None))


def sized(load: Load, value: Any, what: str) -> Any:
    """``value``, a container to copy, after charging its length."""
    if not isinstance(value, _SIZED):
        raise load.corrupt(f"{what} of a {type(value).__name__} (picklers pass data the stream spells out)")
    load.charge(len(value), what)
    return value


def _no_kwargs(load: Load, kwargs: Mapping[str, Any], what: str) -> None:
    if kwargs:
        raise load.corrupt(f"{what} with keyword arguments {sorted(kwargs)}")


def _copying(kind: type, mutable: bool) -> Rule:
    """``list``, ``tuple``, ``set``, ``frozenset``, ``dict``, ``OrderedDict``, ``Counter``."""
    what = f"{kind.__module__}.{kind.__qualname__}"

    def call(load: Load, *args: Any, **kwargs: Any) -> Any:
        _no_kwargs(load, kwargs, what)
        if len(args) > 1:
            raise load.corrupt(f"{what} with {len(args)} arguments")
        return kind(sized(load, args[0], what)) if args else kind()

    def new(load: Load, *args: Any, **kwargs: Any) -> Any:
        if not mutable:
            return call(load, *args, **kwargs)
        if args or kwargs:
            raise load.corrupt(f"{what}.__new__ with arguments (picklers fill it afterwards)")
        return kind()

    return Rule(kind, call, new)


def _bytes_like(kind: type) -> Rule:
    what = kind.__name__

    def call(load: Load, value: Any = b"", encoding: Any = None, errors: Any = None) -> Any:
        if isinstance(value, str):
            if encoding not in ("latin1", "latin-1", "ascii", "utf-8", "utf8") or errors is not None:
                raise load.corrupt(f"{what} of a string in encoding {brief(encoding)}")
            load.charge(len(value), what)
            return kind(value, encoding)
        if encoding is not None or errors is not None or isinstance(value, int):
            raise load.corrupt(f"{what} of a {type(value).__name__} (picklers pass the bytes)")
        return kind(sized(load, value, what))

    return Rule(kind, call, _copying(bytearray, mutable=True).new if kind is bytearray else call)


def _str(load: Load, value: Any = "", encoding: Any = None, errors: Any = None) -> str:
    if isinstance(value, (bytes, bytearray)) and isinstance(encoding, str):
        load.charge(len(value), "builtins.str")
        return str(value, encoding, errors or "strict")
    if type(value) is str or isinstance(value, _SCALARS):
        load.charge(len(value) if type(value) is str else 32, "builtins.str")
        return str(value)
    raise load.corrupt(f"builtins.str of a {type(value).__name__}")


def _scalar_type(kind: type) -> Rule:
    """``int``, ``float``, ``complex``, ``bool``: of numbers and short strings."""

    def call(load: Load, *args: Any) -> Any:
        if len(args) > 2 or not all(isinstance(a, (*_SCALARS, str, bytes)) and
                                    (not isinstance(a, (str, bytes)) or len(a) <= 4300) for a in args):
            raise load.corrupt(f"builtins.{kind.__name__} of {[type(a).__name__ for a in args]}")
        return kind(*args)

    return Rule(kind, call, call)


def _plain_call(kind: Any, *types: type) -> Rule:
    """A constructor whose arguments are small values of ``types``."""
    allowed = (*_SCALARS, *types)

    def call(load: Load, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if not isinstance(arg, allowed) or (isinstance(arg, (str, bytes)) and len(arg) > 64):
                raise load.corrupt(f"{kind.__qualname__} of a {type(arg).__name__}")
        return kind(*args, **kwargs)

    return Rule(kind, call, call)


def _deque(load: Load, items: Any = (), maxlen: Any = None) -> collections.deque[Any]:
    if maxlen is not None and type(maxlen) is not int:
        raise load.corrupt("collections.deque with a maxlen that is not an int")
    return collections.deque(sized(load, items, "collections.deque"), maxlen)


def _defaultdict(load: Load, factory: Any = None, *items: Any) -> Any:
    if factory is not None and rule_of(factory) is None:
        raise load.corrupt(f"collections.defaultdict with a factory of type {type(factory).__name__}")
    made = collections.defaultdict(factory and factory.rule.value)
    if items:
        made.update(sized(load, items[0], "collections.defaultdict"))
    return made


def _encode(load: Load, text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(text, "latin1")``: how pickle protocols 0-2 write bytes."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise load.corrupt(f"_codecs.encode of a {type(text).__name__} in {brief(encoding)}")
    load.charge(len(text), "_codecs.encode")
    return text.encode("latin1")


def _maker_value(load: Load, maker: Any, what: str) -> Any:
    if rule_of(maker) is None:
        raise load.corrupt(f"{what} of a {type(maker).__name__}, not a class the stream names")
    return maker


def _newobj(load: Load, cls: Any = None, *args: Any) -> Any:
    """``copyreg.__newobj__(cls, *args)``: what ``NEWOBJ`` of ``cls`` does."""
    return _maker_value(load, cls, "copyreg.__newobj__")._run("new", args, {})


def _newobj_ex(load: Load, cls: Any = None, args: Any = (), kwargs: Any = None) -> Any:
    if type(args) is not tuple or type(kwargs or {}) is not dict:
        raise load.corrupt("copyreg.__newobj_ex__ without a tuple and a dict")
    return _maker_value(load, cls, "copyreg.__newobj_ex__")._run("new", args, kwargs or {})


_RECONSTRUCTOR_BASES = (object, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


def _reconstructor(load: Load, cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor``: protocols 0 and 1's instance of a caller-trusted
    class ``cls`` built on ``base``, a builtin type."""
    cls = _maker_value(load, cls, "copyreg._reconstructor").rule
    base = _maker_value(load, base, "copyreg._reconstructor").rule.value
    if load.unsafe:
        return copyreg._reconstructor(cls.value, base, state)  # type: ignore[attr-defined]
    if not cls.caller_trusted or base not in _RECONSTRUCTOR_BASES or not issubclass(cls.value, base):
        raise load.corrupt(f"copyreg._reconstructor of {brief(cls.value)} on {brief(base)}")
    if base is object:
        return object.__new__(cls.value)
    if not isinstance(state, (*_SCALARS, *_SIZED)):
        raise load.corrupt(f"copyreg._reconstructor with a state of type {type(state).__name__}")
    if isinstance(state, _SIZED):
        sized(load, state, "copyreg._reconstructor")
    made = base.__new__(cls.value, state)
    if base.__init__ is not object.__init__:
        base.__init__(made, state)
    return made


def _value(obj: Any) -> Rule:
    return Rule(obj)


BUILTIN_RULES: dict[str, Rule] = {
    "builtins.list": _copying(list, mutable=True),
    "builtins.dict": _copying(dict, mutable=True),
    "builtins.set": _copying(set, mutable=True),
    "builtins.tuple": _copying(tuple, mutable=False),
    "builtins.frozenset": _copying(frozenset, mutable=False),
    "builtins.bytes": _bytes_like(bytes),
    "builtins.bytearray": _bytes_like(bytearray),
    "builtins.str": Rule(str, _str, _str),
    **{f"builtins.{kind.__name__}": _scalar_type(kind) for kind in (int, float, complex, bool)},
    "builtins.slice": _plain_call(slice),
    "builtins.range": _plain_call(range),
    "builtins.object": Rule(object, lambda load: object(), lambda load: object()),
    "builtins.Ellipsis": _value(Ellipsis),
    "builtins.NotImplemented": _value(NotImplemented),
    "collections.OrderedDict": _copying(collections.OrderedDict, mutable=True),
    "collections.Counter": _copying(collections.Counter, mutable=True),
    "collections.deque": Rule(collections.deque, _deque, lambda load, *a, **k: collections.deque()),
    "collections.defaultdict": Rule(collections.defaultdict, _defaultdict,
                                    lambda load, *a, **k: collections.defaultdict()),
    **{f"datetime.{kind.__name__}": _plain_call(kind, str, bytes, datetime.tzinfo, datetime.timedelta)
       for kind in (datetime.date, datetime.time, datetime.datetime, datetime.timedelta,
                    datetime.timezone)},
    "_codecs.encode": Rule(_codecs.encode, _encode),
    "copyreg.__newobj__": Rule(copyreg.__newobj__, _newobj),
    "copyreg.__newobj_ex__": Rule(copyreg.__newobj_ex__, _newobj_ex),
    "copyreg._reconstructor": Rule(copyreg._reconstructor, _reconstructor),
}
"""The builtin names every load trusts, by the running Python's spelling."""
