"""The framing of a pickle stream, checked before CPython's unpickler reads it.

CPython's C unpickler (every version from 3.10 to 3.13, measured) sizes its memo
table by the largest index a ``LONG_BINPUT`` or ``PUT`` names: an eight-byte
stream asking for index 2**29 makes it allocate and clear 8 GiB. Nothing it
calls back (``find_class``, ``persistent_load``) sees those opcodes, so
:func:`check_framing` walks the opcodes first and refuses a memo index beyond
the size of the stream, lengths (of strings, bytes, integers and frames)
beyond its end, which it allocates before reading, and extension codes (``EXT1/2/4``), whose globals the
unpickler caches for the whole process, so a later load would not resolve
them again. It interprets nothing else: what the stream builds is
validated by the constructors it names (:mod:`luigi_checkpoint.storage._trust`).

The walk is a regular expression over runs of opcodes whose argument has a
fixed size or ends at a newline (and short strings, the commonest counted
argument), so Python code runs only for other counted arguments and memo
indices. It stops at the first ``STOP`` or unknown opcode, as the unpickler
does.
"""

from __future__ import annotations

import pickletools
import re

from .errors import CorruptPickleError

__all__ = ["check_framing"]

_LONG_BINPUT, _PUT = ord("r"), ord("p")
_EXTENSIONS = (b"\x82", b"\x83", b"\x84")  # EXT1, EXT2, EXT4
_FRAME = b"\x95"
_SHORT_STRINGS = 64
"""Counted arguments of a one-byte length below this are matched by the expression."""


def _opcode_classes(memo_bits: int) -> tuple[re.Pattern[bytes], dict[int, int]]:
    """The run expression (``LONG_BINPUT`` below ``2**memo_bits`` included) and
    the counted opcodes' length sizes (negative: a signed length)."""
    fixed: dict[int, list[bytes]] = {}
    line, two_lines, counted = [], [], {}
    for opcode in pickletools.opcodes:
        code, arg = opcode.code.encode("latin1"), opcode.arg
        if code in (b"r", b"p", b".", _FRAME, *_EXTENSIONS):
            continue
        if arg is None or arg.n >= 0:
            fixed.setdefault(0 if arg is None else arg.n, []).append(code)
        elif arg is pickletools.stringnl_noescape_pair:  # GLOBAL, INST: module and name lines
            two_lines.append(code)
        elif arg.n == pickletools.UP_TO_NEWLINE:
            line.append(code)
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT1:
            counted[code[0]] = 1
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT4:
            counted[code[0]] = -4  # signed
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT4U:
            counted[code[0]] = 4
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT8U:
            counted[code[0]] = 8
        else:
            raise AssertionError(f"pickle opcode {opcode.name} has an argument of unknown size")

    def one_of(codes: list[bytes]) -> bytes:
        return b"[" + b"".join(re.escape(code) for code in codes) + b"]"

    parts = [one_of(codes) + (b".{%d}" % size if size else b"") for size, codes in sorted(fixed.items())]
    parts += [one_of(line) + rb"[^\n]*\n", one_of(two_lines) + rb"[^\n]*\n[^\n]*\n"]
    lengths = b"|".join(re.escape(bytes([n])) + (b".{%d}" % n if n else b"") for n in range(_SHORT_STRINGS))
    parts += [re.escape(bytes([code])) + b"(?:" + lengths + b")"
              for code, size in counted.items() if size == 1]
    lengths4 = b"|".join(re.escape(n.to_bytes(4, "little")) + (b".{%d}" % n if n else b"")
                         for n in range(_SHORT_STRINGS))
    parts += [re.escape(bytes([code])) + b"(?:" + lengths4 + b")"
              for code, size in counted.items() if abs(size) == 4]
    if memo_bits:
        parts.append(b"r..[\x00-" + re.escape(bytes([(1 << (memo_bits - 16)) - 1])) + b"]\x00")
    body = b"(?:" + b"|".join(parts) + b")*"
    try:
        return re.compile(body + b"+", re.DOTALL), counted  # possessive: no backtracking state
    except re.error:  # Python 3.10 has no possessive repeats; nothing follows the run anyway
        return re.compile(body, re.DOTALL), counted


_RUN, _COUNTED = _opcode_classes(0)
_BIG_MEMO_BITS = 20
_RUN_BIG, _ = _opcode_classes(_BIG_MEMO_BITS)
"""For streams of at least ``2**20`` bytes: ``LONG_BINPUT`` below ``2**20``
(a table of 16 MiB at most) needs no Python code."""


def check_framing(data: bytes, source: str) -> None:
    """Refuse ``data`` if it names a memo index larger than itself.

    Raises
    ------
    CorruptPickleError
        Naming ``source``, the offset and the index.
    """
    bound, end, pos = len(data), len(data), 0
    run, counted = (_RUN_BIG if end >> _BIG_MEMO_BITS else _RUN).match, _COUNTED
    while pos < end:
        pos = run(data, pos).end()  # type: ignore[union-attr]  # *+ always matches
        if pos >= end:
            return
        op = data[pos]
        size = counted.get(op)
        if size is not None or op == _FRAME[0]:
            signed, size = size is not None and size < 0, abs(size or 8)
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "little", signed=signed)
            if not 0 <= length <= end - pos - 1 - size:
                raise CorruptPickleError(
                    f"{source}: malformed pickle: a length of {length} bytes at offset {pos}, beyond "
                    f"the end of the stream ({end} bytes): it would make the unpickler allocate that much"
                )
            pos += 1 + size + (length if op != _FRAME[0] else 0)
            continue
        if op == _LONG_BINPUT:
            index, pos = int.from_bytes(data[pos + 1 : pos + 5], "little"), pos + 5
        elif op == _PUT:
            newline = data.find(b"\n", pos)
            text, pos = data[pos + 1 : newline], newline + 1
            index = int(text) if newline > 0 and text.isdigit() else 0  # the unpickler refuses the rest
            if newline < 0:
                return
        elif bytes([op]) in _EXTENSIONS:
            raise CorruptPickleError(
                f"{source}: malformed pickle: extension code (copyreg's registry) at offset {pos}: "
                "not read, since CPython's unpickler caches what they name for the whole process, "
                "past any check (no pickler writes them unless a program registers codes)"
            )
        else:
            return  # STOP, or an opcode the unpickler refuses itself
        if index > bound:
            raise CorruptPickleError(
                f"{source}: malformed pickle: memo index {index} at offset {pos} is beyond the size "
                f"of the stream ({bound} bytes); no pickler writes that, and it would make the "
                "unpickler allocate a table that large"
            )
