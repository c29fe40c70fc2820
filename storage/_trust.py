"""Safe unpickling by construction: every global resolves to a constructor of ours.

One pass, CPython's C unpickler: :func:`load_pickle` resolves each global the
stream names (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``EXT1/2/4``) by one
function, :meth:`_Names.maker`, to a maker running a :class:`~luigi_checkpoint.storage._constructors.Rule`:

- the default vocabulary (:data:`DEFAULT_TRUSTED`): builtin containers and
  scalars, a few ``collections`` and ``datetime`` types, the ``copyreg``
  helpers (:mod:`luigi_checkpoint.storage._constructors`), numpy's dtypes,
  arrays and scalars (:mod:`luigi_checkpoint.storage._numpy_constructors`) and
  random objects (:mod:`luigi_checkpoint.storage._random_constructors`), each a
  validating constructor of ours, whatever opcode calls it (``REDUCE``,
  ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ``, ``INST``, the ``copyreg`` helpers);
- the caller's trusted classes and functions (``trusted=``, :func:`register_trusted`),
  called freely: their exceptions make the archive *unloadable*, not damaged;
- anything else is refused: the pass goes on with placeholders, so the one
  :class:`UntrustedTypeError` names every untrusted global, and nothing of them
  is imported.

Names are compared exactly, as ``"module.qualname"`` after three mappings:
Python 2 names (``__builtin__.eval`` is ``builtins.eval``, as pickle's
``fix_imports`` does), numpy names to the running numpy's spelling
(``numpy.core`` and ``numpy._core``, scalar types:
:mod:`luigi_checkpoint.storage._numpy_compat`), then the caller's ``renames``.
:func:`audit_pickle` is the same pass without reading array members, so what it
reports is what a load resolves. Before the pass, :mod:`luigi_checkpoint.storage._framing`
refuses memo indices the unpickler would allocate a table for.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from . import _numpy_compat as numpy_compat
from ._constructors import BUILTIN_RULES, Load, Placeholder, Rule, make_maker, unbuildable
from ._framing import check_framing
from ._numpy_constructors import NUMPY_RULES
from ._random_constructors import RANDOM_RULES
from ._settle import settle
from .errors import CheckpointError, CorruptPickleError, UnloadableArchiveError, UntrustedTypeError

__all__ = ["Audit", "audit_pickle", "load_pickle", "load_prefix", "register_trusted"]

TrustedSpec = Iterable["type | Callable[..., Any] | str"]
PersistentLoad = Callable[[Any], Any]

_DEFAULT_RULES: dict[str, Rule] = {**BUILTIN_RULES, **NUMPY_RULES, **RANDOM_RULES}
DEFAULT_TRUSTED: frozenset[str] = frozenset(_DEFAULT_RULES)
"""Dotted names every load trusts (exact names, never whole modules), as the
running numpy spells them: :func:`_resolve` maps other versions' names first."""
_PACKAGE = __name__.rpartition(".")[0]

_registered: set[str] = set()


@dataclass(frozen=True)
class Audit:
    """Globals a pickle would import, as dotted names after renames (sorted, unique),
    and those of them that are not trusted."""

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


def _caller_trusted(trusted: TrustedSpec) -> frozenset[str]:
    if isinstance(trusted, str):
        raise TypeError(f"trusted must be a list of classes or dotted names, not {trusted!r}")
    return frozenset(_registered | {_dotted(item) for item in trusted})


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


class _Names:
    """Resolves one load's globals: the one resolution of loads and audits."""

    def __init__(self, load: Load, trusted: TrustedSpec, renames: Mapping[str, str] | None,
                 *, auditing: bool = False) -> None:
        self.load, self.renames, self.auditing = load, renames, auditing
        self.trusted = _caller_trusted(trusted)
        self.found: set[str] = set()
        self.makers: dict[str, type] = {}

    def maker(self, module: str, name: str) -> type:
        module, name = _resolve(module, name, self.renames)
        dotted = f"{module}.{name}"
        made = self.makers.get(dotted)
        if made is None:
            self.found.add(dotted)
            made = self.makers[dotted] = make_maker(dotted, self._rule(dotted), self.load)
        return made

    def _rule(self, dotted: str) -> Rule:
        rule = _DEFAULT_RULES.get(dotted)
        if rule is not None:
            return rule
        if dotted not in self.trusted and not self.load.unsafe:
            self.load.refused.add(dotted)
            return _PLACEHOLDER
        if self.auditing:  # an audit runs none of the caller's code
            return _PLACEHOLDER
        obj = _import(dotted, self.load.source)
        # the caller's code gets real objects: the classes and numpy objects, not our stand-ins
        def call(load: Load, *args: Any, **kwargs: Any) -> Any:
            return obj(*settle(args, load), **settle(kwargs, load))

        if isinstance(obj, type):
            self.load.trusted_types.add(obj)

            def new(load: Load, *args: Any, **kwargs: Any) -> Any:
                return obj.__new__(obj, *settle(args, load), **settle(kwargs, load))

            return Rule(obj, call, new, caller_trusted=True)
        return Rule(obj, call, caller_trusted=True)


def _placeholder(load: Load, *args: Any, **kwargs: Any) -> Placeholder:
    return Placeholder()


_PLACEHOLDER = Rule(Placeholder, _placeholder, _placeholder)


def _import(dotted: str, source: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UnloadableArchiveError(
            f"{source}: cannot import {dotted}: {exc} (the archive is intact; if the "
            f"class moved or was renamed, pass renames={{{dotted!r}: 'new.module.Name'}})"
        ) from exc
    return obj


class _Unpickler(pickle.Unpickler):
    """CPython's unpickler, whose globals come from :class:`_Names`."""

    def __init__(self, file: IO[bytes], names: _Names) -> None:
        super().__init__(file, encoding="latin1")
        self._names = names

    def find_class(self, module: str, name: str) -> Any:
        # docstring inherited
        if type(module) is not str or type(name) is not str:
            raise pickle.UnpicklingError("a global named by something other than strings")
        return self._names.maker(module, name)


def _run(file: IO[bytes], data: bytes, names: _Names, persistent_load: PersistentLoad) -> Any:
    """One pass over ``file`` (whose bytes are ``data``): the result, settled."""
    load = names.load
    check_framing(data, load.source)
    unpickler = _Unpickler(file, names)
    unpickler.persistent_load = persistent_load  # type: ignore[assignment]
    try:
        result = unpickler.load()
    except Exception as exc:
        if load.refused:
            raise UntrustedTypeError(load.source, load.refused) from exc
        if isinstance(exc, CheckpointError):
            raise
        refusing = _callers_code(exc)
        if refusing is not None:
            raise unbuildable(load.source, refusing, exc) from exc
        raise load.corrupt(f"{type(exc).__name__}: {exc}") from exc
    if load.refused:
        raise UntrustedTypeError(load.source, load.refused)
    return settle(result, load) if load.made else result


def _callers_code(exc: BaseException) -> str | None:
    """The class whose Python code (outside this package, pickle and numpy)
    raised ``exc``: a trusted class's ``__setstate__``; None if none did."""
    traceback = exc.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        module = frame.f_globals.get("__name__", "")
        if module.partition(".")[0] not in ("pickle", "numpy") and not module.startswith(_PACKAGE):
            owner = frame.f_locals.get("self")
            return f"{type(owner).__module__}.{type(owner).__qualname__}" if owner is not None else module
        traceback = traceback.tb_next
    return None


def load_pickle(
    data: bytes,
    *,
    source: str,
    trusted: TrustedSpec = (),
    renames: Mapping[str, str] | None = None,
    unsafe: bool = False,
    persistent_load: PersistentLoad | None = None,
) -> Any:
    """Unpickle ``data`` safely (see the module); ``unsafe=True`` trusts every name.

    Raises
    ------
    UntrustedTypeError
        Naming every untrusted global the stream names.
    CorruptPickleError
        For any malformed stream, or one asking our constructors for what no
        pickler writes; a :class:`CheckpointError` raised while loading (for
        example by ``persistent_load``) passes through unchanged.
    UnloadableArchiveError
        A trusted class that cannot be imported, or refuses its state.
    """
    names = _Names(Load(source, len(data), unsafe=unsafe), trusted, renames)
    return _run(_reader(data), data, names, persistent_load or _no_persistent_ids(source))


def audit_pickle(
    data: bytes,
    *,
    trusted: TrustedSpec = (),
    renames: Mapping[str, str] | None = None,
    source: str = "<pickle>",
    persistent_load: PersistentLoad | None = None,
) -> Audit:
    """The globals ``data`` names and which are untrusted, from a load's own pass.

    Persistent ids load as placeholders unless ``persistent_load`` is given.

    Raises
    ------
    CorruptPickleError
        The stream is malformed and names no untrusted global.
    """
    names = _Names(Load(source, len(data)), trusted, renames, auditing=True)
    try:
        _run(_reader(data), data, names, persistent_load or (lambda pid: Placeholder()))
    except UntrustedTypeError:
        pass
    return Audit(tuple(sorted(names.found)), tuple(sorted(names.load.refused)))


def load_prefix(data: bytes, *, source: str) -> tuple[Any, int]:
    """The object pickled at the start of ``data`` (nothing but the default
    vocabulary, no persistent ids) and the offset where its stream ends."""
    names = _Names(Load(source, len(data)), (), None)
    file = _reader(data)
    return _run(file, data, names, _no_persistent_ids(source)), file.tell()


def _reader(data: bytes) -> io.BufferedReader:
    """``data`` as a file with ``peek``, which the unpickler reads ahead in
    blocks (without it, protocols 0-3 cost a Python call per opcode)."""
    return io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]


def _no_persistent_ids(source: str) -> PersistentLoad:
    def refuse(pid: Any) -> Any:
        raise CorruptPickleError(f"{source}: malformed pickle: persistent id {pid!r} where none belongs")
    return refuse
