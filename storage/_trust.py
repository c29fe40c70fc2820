"""Safe unpickling: audit every global a pickle would import, then build.

Loading is safe by default. Before anything is constructed, :func:`audit_pickle`
walks the opcodes (``pickletools.genops``, nothing executed) and lists every
global the stream names: ``GLOBAL``/``INST`` (protocols 0-1), ``STACK_GLOBAL``
(protocol 2+, whose module and name strings are followed through the memo) and
``EXT1/2/4`` (the copyreg extension registry). Any name outside the allowlist
refuses the whole pickle with one :class:`UntrustedTypeError` naming all of
them; :func:`restricted_unpickler` checks each name again as it is imported.

Names are compared exactly, as ``"module.qualname"`` after three mappings:
Python 2 names (``__builtin__.eval`` is ``builtins.eval``, as pickle's
``fix_imports`` does), numpy names to the running numpy's spelling (``numpy.core``
and ``numpy._core``, scalar types: :mod:`luigi_checkpoint.storage._numpy_compat`),
then the caller's ``renames``. The defaults are data types only: builtin
containers and scalars, numpy arrays, dtypes, scalars and random generators, a
few ``collections`` and ``datetime`` types, and the ``copyreg`` helpers (their
class arguments are globals of their own, so they only rebuild trusted classes).
numpy's random pickling helpers are replaced by ones that take every numpy
version's arguments (and build only numpy's own bit generators).

Allowed globals are also called only as picklers call them (the policy is in
:mod:`luigi_checkpoint.storage._pickle_calls`), so a small stream cannot make them allocate a lot:
``bytes(10**9)``, ``list(range(N))`` or a gigabyte ``ndarray`` are refused by the
audit as :class:`CorruptPickleError` before anything runs. A dtype may be built
(``BUILD``) once, before anything uses it, and must then be one numpy's own
constructor makes (:mod:`luigi_checkpoint.storage._dtypes`): a forged record layout would make
numpy read and write outside its arrays.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import importlib
import io
import pickle
import pickletools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from . import _numpy_compat as numpy_compat
from . import _pickle_calls as calls
from ._dtypes import layout_problem
from .errors import CheckpointError, CorruptPickleError, UnloadableArchiveError, UntrustedTypeError
from ._pickle_calls import NUMPY_RANDOM_CLASSES, NUMPY_RANDOM_HELPERS, NUMPY_TYPES

__all__ = ["Audit", "audit_pickle", "load_pickle", "register_trusted", "restricted_unpickler"]

TrustedSpec = Iterable["type | Callable[..., Any] | str"]

_NUMPY_CORE_HELPERS = ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer",
                       "_internal._convert_to_stringdtype_kwargs")
_BUILTINS = (
    "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float",
    "complex", "bool", "slice", "range", "object", "Ellipsis", "NotImplemented",
)
DEFAULT_TRUSTED: frozenset[str] = frozenset(
    [f"builtins.{name}" for name in _BUILTINS]
    + ["_codecs.encode", "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"]
    + ["collections.OrderedDict", "collections.deque", "collections.Counter",
       "collections.defaultdict"]
    + [f"datetime.{name}" for name in ("date", "time", "datetime", "timedelta", "timezone")]
    + ["numpy.ndarray", "numpy.dtype"]
    + [f"{numpy_compat.CORE}.{helper}" for helper in _NUMPY_CORE_HELPERS]
    + [f"{t.__module__}.{t.__qualname__}" for t in NUMPY_TYPES]
    + [f"numpy.random.{name}" for name in NUMPY_RANDOM_CLASSES + NUMPY_RANDOM_HELPERS]
)
"""Dotted names every load trusts (exact names, never whole modules), as the
running numpy spells them: :func:`_resolve` maps other versions' names first."""

_registered: set[str] = set()
MAX_DEPTH = 10_000
"""Stack plus mark depth an audited stream may reach. ``pickle.dumps`` cannot
write objects nested beyond the recursion limit (1,000), so only a crafted
stream goes deeper, to make loading (and freeing) slow."""
_CHANGED_OPS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_TUPLE_OPS = {"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
               "SHORT_BINUNICODE", "BINUNICODE8"}
_GET_OPS, _PUT_OPS = {"GET", "BINGET", "LONG_BINGET"}, {"PUT", "BINPUT", "LONG_BINPUT"}
_SPECIAL_OPS = {*_STRING_OPS, *_GET_OPS, *_PUT_OPS, "MEMOIZE", "MARK", "PROTO", "DUP", "GLOBAL",
                "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
# per opcode: index of the mark in its stack arguments (-1: none), items popped, items pushed
_SHAPES = {op.name: (op.stack_before.index(pickletools.markobject)
                     if pickletools.markobject in op.stack_before else -1,
                     len(op.stack_before), len(op.stack_after)) for op in pickletools.opcodes}
_SHAPES.update({name: (-1, 1, 1) for name in _PUT_OPS})  # PUT reads the top, as MEMOIZE does


@dataclass(frozen=True)
class Audit:
    """Globals a pickle would import, as dotted names after renames (sorted, unique).

    ``untrusted`` may also hold what cannot be named (``"<dynamic global>"``,
    ``"<extension code N>"``) and trusted globals the stream would modify.
    """

    globals: tuple[str, ...]
    untrusted: tuple[str, ...]


def _dotted(item: type | Callable[..., Any] | str) -> str:
    if isinstance(item, str):
        if not item or item.startswith(".") or "." not in item:
            raise ValueError(f"not a dotted name 'module.qualname': {item!r}")
        return item
    return f"{item.__module__}.{item.__qualname__}"


def register_trusted(*types_or_dotted_names: type | Callable[..., Any] | str) -> None:
    """Trust classes (or ``"pkg.mod.Class"`` names) in every later load of this process."""
    _registered.update(_dotted(item) for item in types_or_dotted_names)


def _trusted_set(trusted: TrustedSpec) -> frozenset[str]:
    if isinstance(trusted, str):
        raise TypeError(f"trusted must be a list of classes or dotted names, not {trusted!r}")
    return DEFAULT_TRUSTED | _registered | {_dotted(item) for item in trusted}


def _resolve(module: str, name: str, renames: Mapping[str, str] | None) -> tuple[str, str]:
    """Map Python 2 names and other numpy versions' names, then apply ``renames``
    (exact name, else longest prefix)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    module, name = numpy_compat.read_name(module, name)
    if not renames:
        return module, name
    exact = renames.get(f"{module}.{name}")
    if exact is not None:
        new_module, _, new_name = exact.rpartition(".")
        return new_module, new_name
    prefixes = [old for old in renames if module == old or module.startswith(old + ".")]
    if prefixes:
        old = max(prefixes, key=len)
        module = renames[old] + module[len(old):]
    return module, name


def audit_pickle(
    data: bytes,
    *,
    trusted: TrustedSpec = (),
    renames: Mapping[str, str] | None = None,
    source: str = "<pickle>",
) -> Audit:
    """List the globals ``data`` would import, without constructing anything.

    The stack and memo are simulated just enough to know which strings feed
    ``STACK_GLOBAL``; operands that are not constant strings count as the
    untrusted name ``"<dynamic global>"``. A ``BUILD`` whose target is an
    imported global itself (setting attributes on a class or function) makes that
    global untrusted. Work and memory are linear in ``len(data)``, and so is what
    the unpickler may allocate afterwards: a memo index larger than the stream
    (which makes pickle allocate a memo table that size) is refused as corrupt,
    and so are calls of trusted globals no pickler writes
    (:mod:`luigi_checkpoint.storage._pickle_calls`), unless the stream is refused for untrusted names.

    Raises
    ------
    CorruptPickleError
        The stream is malformed (naming ``source``).
    """
    allowed = _trusted_set(trusted)
    found: set[str] = set()
    refused: set[str] = set()
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    problems: set[str] = set()
    copied = filled = 0

    def imported(module: str, name: str) -> calls.Global:
        dotted = ".".join(_resolve(module, name, renames))
        found.add(dotted)
        if dotted not in allowed:
            refused.add(dotted)
        return calls.Global(dotted)

    def unknown(description: str) -> None:
        found.add(description)
        refused.add(description)
        stack.append(None)

    def call(target: Any, arguments: Any, kwargs: Any = None) -> calls.Value | None:
        nonlocal copied
        result = calls.RESULT_KINDS.get(getattr(target, "name", ""))
        target, arguments, kwargs = calls.callee(target, arguments, kwargs)
        name = getattr(target, "name", "")
        result = result or calls.RESULT_KINDS.get(name)
        problem = calls.call_problem(target, arguments, kwargs)
        position = calls.ARGUMENT_KINDS.get(name, (-1,))[0]
        copy = not problem and 0 <= position < len(arguments)
        size = calls.size(arguments[position]) if copy else 0
        copied += size
        if problem or copied > 2 * len(data):
            problems.add(problem or "calls copying more than twice the size of the stream")
        if result == "dtype":
            return calls.made_dtype(name, arguments)
        return calls.Value(result, size) if result else None

    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
            op = opcode.name
            if len(stack) + len(marks) > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels (no pickler writes that)")
            mark_at, count, pushed = _SHAPES[op]
            sliced: list[Any] = []
            if mark_at >= 0:
                if not marks:
                    raise ValueError(f"{op} without MARK")
                start = marks.pop()
                sliced = stack[start:]
                del stack[start:]
                count = mark_at
            args: list[Any] = []
            if count:
                if len(stack) - (marks[-1] if marks else 0) < count:
                    raise ValueError(f"stack underflow at {op}")
                args = stack[-count:]
                del stack[-count:]
            if op not in _PUT_OPS and op not in ("MEMOIZE", "DUP"):
                calls.mark_used(args[1:] if op == "BUILD" else args)
                calls.mark_used(sliced)
            if op not in _SPECIAL_OPS:
                value: Any = None
                if op in _CHANGED_OPS:
                    value = args[0]
                    if op == "BUILD" and isinstance(value, calls.Global):
                        refused.add(f"{value.name} (BUILD sets its attributes)")
                    elif op == "BUILD" and calls.kind(value) == "array":
                        problem = calls.array_state_problem(args[1])
                        filled += 0 if problem else calls.filled_bytes(args[1])
                        if problem or filled > calls.FILL_RATIO * len(data):
                            problems.add(problem or "arrays filled from lists larger than the stream allows")
                    elif op == "BUILD" and calls.kind(value) == "dtype":
                        problem = calls.dtype_build_problem(value)
                        if problem:
                            problems.add(problem)
                        value.built = True
                        value.itemsize = calls.built_itemsize(value.itemsize, args[1])
                    elif isinstance(value, calls.Value):
                        value.size += len(args) - 1 + len(sliced)
                elif op in calls.MADE:
                    made = len(arg) if arg is not None else len(sliced)
                    value = calls.Value(calls.MADE[op], made)
                elif op in _INT_OPS:
                    value = arg
                elif op in ("NEWTRUE", "NEWFALSE"):
                    value = op == "NEWTRUE"
                elif op in _TUPLE_OPS:
                    value = tuple(sliced or args)
                elif op in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                    value = call(*args)
                elif op in ("OBJ", "INST"):
                    if op == "OBJ" and not sliced:
                        raise ValueError("OBJ without a class")
                    module, _, name = (arg or "").partition(" ")
                    target = imported(module, name) if op == "INST" else sliced.pop(0)
                    value = call(target, tuple(sliced))
                if pushed:
                    stack.append(value)  # only DUP (handled below) pushes two
            elif op == "MARK":
                marks.append(len(stack))
            elif op in _STRING_OPS:
                stack.append(arg)
            elif op in _GET_OPS:
                if arg not in memo:
                    raise ValueError(f"{op} of missing memo key {arg}")
                stack.append(memo[arg])
            elif op in _PUT_OPS or op == "MEMOIZE":
                key = len(memo) if op == "MEMOIZE" else arg
                if key > len(data):
                    raise ValueError(f"{op} index {key} beyond the size of the stream")
                stack.append(args[0])
                memo[key] = args[0]
            elif op == "PROTO":
                if arg > pickle.HIGHEST_PROTOCOL:
                    raise ValueError(f"unsupported pickle protocol {arg}")
            elif op == "DUP":
                stack.extend(args * 2)
            elif op == "GLOBAL":
                stack.append(imported(*arg.partition(" ")[::2]))
            elif op == "STACK_GLOBAL":
                if all(isinstance(value, str) for value in args):
                    stack.append(imported(*args))
                else:
                    unknown("<dynamic global>")
            else:
                key = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
                if key is None:
                    unknown(f"<extension code {arg}>")
                else:
                    stack.append(imported(*key))
    except (ValueError, KeyError, IndexError, TypeError, EOFError) as exc:
        raise CorruptPickleError(f"{source}: malformed pickle: {exc}") from exc
    if problems and not refused:
        raise CorruptPickleError(f"{source}: pickle asks trusted callables for what no pickler "
                                 f"writes: {'; '.join(sorted(problems))}")
    return Audit(tuple(sorted(found)), tuple(sorted(refused)))


class _RestrictedUnpickler(pickle._Unpickler):
    """Unpickler whose ``find_class`` maps names and imports only ``allowed`` ones,
    and whose ``BUILD`` of a dtype checks the layout it made (:mod:`luigi_checkpoint.storage._dtypes`).

    It is pickle's pure-Python unpickler, the one whose opcodes can be
    extended; the streams it reads are small, since arrays are archive members.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: IO[bytes], source: str, allowed: frozenset[str] | None,
                 renames: Mapping[str, str] | None) -> None:
        super().__init__(file, encoding="latin1")
        self._source, self._allowed, self._renames = source, allowed, renames
        self._names: dict[int, str] = {}  # id of each imported global -> its dotted name

    def _building(self, what: object, build: Callable[[], None]) -> None:
        """Run the opcode ``build``, which calls ``what`` (a global of the stream
        or the class of the object it builds on).

        A caller-trusted class that raises makes the archive unloadable, not
        damaged: its bytes are good, the class's code changed. Failures of the
        default constructors are left to :func:`load_pickle` (a malformed stream).
        """
        try:
            build()
        except CheckpointError:
            raise
        except Exception as exc:
            name = self._names.get(id(what))
            if name is None or name in DEFAULT_TRUSTED:
                raise
            raise UnloadableArchiveError(
                f"{self._source}: cannot build {name}: {type(exc).__name__}: {exc} (the archive "
                "is intact; the class no longer accepts the state it saved: make it accept the "
                "old state, for example a default in __setstate__, or run the code that wrote it)"
            ) from exc

    def load_build(self) -> None:
        target = self.stack[-2]
        self.stack[-1] = numpy_compat.build_state(target, self.stack[-1])
        self._building(type(target), super().load_build)  # type: ignore[misc]
        if isinstance(target, np.dtype):
            problem = layout_problem(target)
            if problem:
                raise CorruptPickleError(f"{self._source}: malformed pickle: {problem}")

    def load_reduce(self) -> None:
        self._building(self.stack[-2], super().load_reduce)  # type: ignore[misc]

    def load_newobj(self) -> None:
        self._building(self.stack[-2], super().load_newobj)  # type: ignore[misc]

    def load_newobj_ex(self) -> None:
        self._building(self.stack[-3], super().load_newobj_ex)  # type: ignore[misc]

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def find_class(self, module: str, name: str) -> Any:
        # docstring inherited
        module, name = _resolve(module, name, self._renames)
        dotted = f"{module}.{name}"
        if self._allowed is not None and dotted not in self._allowed:
            raise UntrustedTypeError(self._source, [dotted])
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UnloadableArchiveError(
                f"{self._source}: cannot import {dotted}: {exc} (the archive is intact; if the "
                f"class moved or was renamed, pass renames={{{dotted!r}: 'new.module.Name'}})"
            ) from exc
        obj = numpy_compat.READ_HELPERS.get(dotted, obj)
        self._names.setdefault(id(obj), dotted)
        return obj


def restricted_unpickler(
    file: IO[bytes],
    *,
    source: str,
    trusted: TrustedSpec = (),
    renames: Mapping[str, str] | None = None,
    unsafe: bool = False,
    persistent_load: Callable[[Any], Any] | None = None,
) -> pickle._Unpickler:
    """An unpickler over ``file`` that refuses untrusted globals as it meets them.

    ``renames`` and the Python 2 / numpy name mappings apply as in
    :func:`audit_pickle`; ``unsafe=True`` imports any name; ``persistent_load``
    resolves persistent ids. Byte strings of Python 2 pickles decode as latin-1.
    Every ``BUILD`` of a dtype is checked against numpy's constructor
    (:mod:`luigi_checkpoint.storage._dtypes`). This is the second line of defense: only
    :func:`load_pickle` also audits (refusing ``BUILD`` on globals, dtypes
    built twice or after use, and size bombs before anything runs).
    """
    unpickler = _RestrictedUnpickler(
        file, source, None if unsafe else _trusted_set(trusted), renames
    )
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    return unpickler


def load_pickle(
    data: bytes,
    *,
    source: str,
    trusted: TrustedSpec = (),
    renames: Mapping[str, str] | None = None,
    unsafe: bool = False,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """Audit ``data``, then unpickle it with :func:`restricted_unpickler`.

    Raises
    ------
    UntrustedTypeError
        Naming every untrusted global (skipped when ``unsafe``).
    CorruptPickleError
        For any malformed stream; a :class:`CheckpointError` raised while loading
        (for example by ``persistent_load``) passes through unchanged.
    """
    audit = audit_pickle(data, trusted=trusted, renames=renames, source=source)
    if audit.untrusted and not unsafe:
        raise UntrustedTypeError(source, audit.untrusted)
    unpickler = restricted_unpickler(
        io.BytesIO(data), source=source, trusted=trusted, renames=renames, unsafe=unsafe,
        persistent_load=persistent_load,
    )
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # a hostile stream can make any trusted constructor fail
        problem = f"{type(exc).__name__}: {exc}"
        raise CorruptPickleError(f"{source}: malformed pickle: {problem}") from exc
