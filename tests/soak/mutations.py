"""Broken and hostile variants of valid archives for the fuzz campaign.

:func:`mutate` applies one to three random mutations, each aimed at a layer
of the format: raw bytes (bit flips, truncation, insertion), ZIP records
(lies in the local headers, central directory, end record and ZIP64 records),
NPY headers (lying shapes and dtypes), members (duplicated, reordered,
dropped, renamed, recompressed, replaced by deep or lying pickles and deep
JSON) and whole-file tricks (prepended or appended bytes). Every choice comes
from the ``random.Random`` passed in, so an input is reproducible from its seed.
"""

from __future__ import annotations

import io
import pickle
import random
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

LOCAL, CENTRAL, END, END64, LOCATOR64 = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
NPY_MAGIC = b"\x93NUMPY"

# (signature, [(offset, struct format)]) of the fields worth lying about
_FIELDS = {
    LOCAL: [(8, "<H"), (14, "<I"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H"), (6, "<H")],
    CENTRAL: [(10, "<H"), (16, "<I"), (20, "<I"), (24, "<I"), (28, "<H"), (30, "<H"), (32, "<H"), (42, "<I"), (8, "<H")],
    END: [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<H"), (4, "<H")],
    END64: [(4, "<Q"), (24, "<Q"), (32, "<Q"), (40, "<Q"), (48, "<Q")],
    LOCATOR64: [(4, "<I"), (8, "<Q"), (16, "<I")],
}


def _lie(rng: random.Random, value: int, fmt: str, length: int) -> int:
    top = (1 << (8 * struct.calcsize(fmt))) - 1
    choices = [0, 1, top, top - 1, value + 1, value - 1, value * 2, value // 2, length, length - 1,
               length + 1, 1 << 31, 1 << 30, rng.randrange(top + 1), value + rng.randrange(1, 4096)]
    return rng.choice(choices) & top


def header_lie(data: bytes, rng: random.Random) -> bytes:
    """Overwrite one field of one ZIP record with a plausible lie."""
    records = [(m.start(), sig) for sig in _FIELDS for m in re.finditer(re.escape(sig), data)]
    if not records:
        return bit_flip(data, rng)
    start, sig = rng.choice(records)
    offset, fmt = rng.choice(_FIELDS[sig])
    where = start + offset
    if where + struct.calcsize(fmt) > len(data):
        return truncate(data, rng)
    (value,) = struct.unpack_from(fmt, data, where)
    out = bytearray(data)
    struct.pack_into(fmt, out, where, _lie(rng, value, fmt, len(data)))
    return bytes(out)


_SHAPES = ["(10000000000,)", "(-1,)", "(4294967296, 4294967296)", "(0,)", "(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)",
           "(9223372036854775807,)", "()", "(3,", "None", "(1.5,)", "('a',)", "(2**40,)"]
_DTYPES = ["'|O'", "'<U2147483647'", "'|V0'", "'<f8'", "'|S0'", "'>i4'", "[('a', '<f8')]", "'<M8[ns]'",
           "'?'", "'<c32'", "'nonsense'", "{'names': ['a'], 'formats': ['|O']}", "'<V1099511627776'"]


def npy_lie(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one NPY header's shape, dtype or order, with or without keeping its length."""
    starts = [m.start() for m in re.finditer(re.escape(NPY_MAGIC), data)]
    if not starts:
        return header_lie(data, rng)
    start = rng.choice(starts)
    if start + 10 > len(data):
        return truncate(data, rng)
    length = struct.unpack_from("<H", data, start + 8)[0]
    text = data[start + 10 : start + 10 + length].decode("latin1")
    key = rng.choice(["shape", "descr", "fortran_order"])
    value = {"shape": _SHAPES, "descr": _DTYPES, "fortran_order": ["True", "1", "'yes'", "None"]}[key]
    new = re.sub(rf"'{key}': ([^,}}]+(\)|'|\]|\}})?)", f"'{key}': {rng.choice(value)}", text, count=1)
    if rng.random() < 0.7:  # keep the header length: the lie must survive the size check
        new = new.rstrip(" \n")[:length - 1].ljust(length - 1) + "\n"
    encoded = new.encode("latin1")
    out = bytearray(data[: start + 8]) + struct.pack("<H", len(encoded)) + encoded
    return bytes(out + data[start + 10 + length :])


def bit_flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_set(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.choice([rng.randrange(len(data) + 1), len(data) - rng.randrange(1, 64), rng.randrange(64)])
    return data[: max(cut, 0)]


def splice(data: bytes, rng: random.Random) -> bytes:
    """Insert, delete or duplicate a run of bytes somewhere."""
    at = rng.randrange(len(data) + 1)
    size = rng.choice([1, 2, 4, 8, 30, 46, 512, rng.randrange(1, 4096)])
    action = rng.randrange(3)
    if action == 0:
        return data[:at] + rng.randbytes(size) + data[at:]
    if action == 1:
        return data[:at] + data[at + size :]
    return data[:at] + data[at : at + size] * 2 + data[at + size :]


def wrap(data: bytes, rng: random.Random) -> bytes:
    """Bytes before or after the archive, or two archives glued together."""
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 300)) + data
    if choice == 1:
        return data + rng.randbytes(rng.randrange(1, 300))
    if choice == 2:
        return data + data
    return data + END + rng.randbytes(18)


def deep_pickle(rng: random.Random, depths: tuple[int, ...] = (200, 1000)) -> bytes:
    """Deeply nested lists, tuples or dicts, or a lying length opcode."""
    depth = rng.choice(depths)
    kind = rng.randrange(5)
    if kind == 0:
        return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."
    if kind == 1:
        return b"\x80\x04" + b"(" * depth + b"t" * depth + b"."
    if kind == 2:
        return b"\x80\x04}" + b"K\x00}" * depth + b"s" * depth + b"."
    if kind == 3:  # BINBYTES8 / BINUNICODE8 claiming an exabyte
        return b"\x80\x04" + rng.choice([b"\x8e", b"\x8d", b"\x96"]) + struct.pack("<Q", 1 << 60) + b"xx."
    return b"\x80\x02" + b"\x8b" + struct.pack("<i", 1 << 30) + b"\x01."  # LONG4 of a gigabyte


def lying_pickle(rng: random.Random, sizes: tuple[int, ...] = (10**10, 2**40)) -> bytes:
    """Trusted callables asked to allocate far more than the pickle holds."""
    n = b"\x8a\x08" + rng.choice(sizes).to_bytes(8, "little")  # LONG1
    choices = [
        b"\x80\x02c__builtin__\nbytearray\n" + n + b"\x85R.",
        b"\x80\x02c__builtin__\nbytes\n" + n + b"\x85R.",
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + n + b"\x85C\x01b\x87R.",
        b"\x80\x02cnumpy\nndarray\n" + n + b"\x85\x81.",
        b"\x80\x02c__builtin__\nrange\n" + n + b"\x85R.",
        record_of_objects(rng.choice([10**8, 2**28 - 1])),
    ]
    return rng.choice(choices)


def _edited(data: bytes, edits: list[tuple[bytes, bytes]]) -> bytes:
    """``data`` with every ``old`` replaced by ``new``, for each pair (each must occur)."""
    for old, new in edits:
        assert old in data, old
        data = data.replace(old, new)
    return data


def record_of_objects(count: int) -> bytes:
    """numpy's pickle of one record whose field holds 3 objects, edited to
    declare ``count`` objects (``count`` < 2**28): 364 bytes that make numpy
    allocate and fill 8 * ``count`` bytes before it looks at the list."""
    data = pickle.dumps(np.zeros(1, dtype=[("f", "O", (3,))]), protocol=2)
    size = f"V{8 * count}".encode()
    edits = [
        (b"bK\x03\x85", b"bJ" + count.to_bytes(4, "little") + b"\x85"),  # subarray shape (3,)
        (b"X\x03\x00\x00\x00V24", b"X" + len(size).to_bytes(4, "little") + size),  # dtype strings
        (b"NNK\x18K\x08", b"NNJ" + (8 * count).to_bytes(4, "little") + b"K\x08"),  # field dtype elsize
        (b"sK\x18K\x01", b"sJ" + (8 * count).to_bytes(4, "little") + b"K\x01"),  # record elsize
    ]
    return _edited(data, edits)


def forged_dtype_pickles() -> dict[str, bytes]:
    """numpy's pickles of record arrays, edited so the dtype they rebuild is
    one no constructor makes, or is rebuilt after an array used it. numpy's
    own unpickling of the first two crashes (segfault); of the last, an array
    claims 16,016 bytes over a 16-byte buffer."""
    def dumps(obj: Any, fast: bool = False) -> bytes:
        out = io.BytesIO()
        pickler = pickle.Pickler(out, protocol=2)
        pickler.fast = fast  # no memo: a fragment of the stream stands alone
        pickler.dump(obj)
        return out.getvalue()

    padded = dumps(np.zeros(1, dtype=np.dtype({"names": ["o"], "formats": ["O"], "offsets": [0], "itemsize": 64})))
    one = dumps(np.zeros(1, dtype=[("o", "O")]))
    union = dumps(np.zeros(1, dtype=np.dtype({"names": ["o", "x"], "formats": ["O", "f8"], "offsets": [0, 8]})))
    subarray = dumps(np.zeros(1, dtype=[("f", "O", (3,))]))
    small = dumps(np.zeros(2, dtype=[("x", "f8")]))
    big = dumps(np.dtype([("x", "f8"), ("y", "f8", (1000,))]), fast=True)
    reduced = small.index(b"R", small.index(b"cnumpy\ndtype\n"))
    memo = small[reduced + 2:reduced + 3]  # the dtype's BINPUT index
    return {
        "object field past the end of the item": _edited(padded, [(b"bK\x00\x86", b"bM\xa0\x0f\x86")]),
        "object field without the object flag, pointer bytes from the stream": _edited(one, [
            (b"K\x08K\x01K\x1bt", b"K\x08K\x01K\x00t"), (b"]q\x19K\x00\x85q\x1aa", b"C\x08AAAAAAAA")]),
        "object field overlapping a float field": _edited(union, [(b"bK\x08\x86", b"bK\x00\x86")]),
        "subarray of 3 objects in an 8-byte field": _edited(subarray, [(b"NNK\x18K\x08", b"NNK\x08K\x08")]),
        "dtype rebuilt after an array used it": small[:-1] + b"h" + memo + big[big.index(b"R") + 1:-2] + b"b0.",
    }


def deep_json(rng: random.Random) -> bytes:
    depth = rng.choice([1000, 20_000])
    return rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"1e99999", b'"\\ud800"'])


def _members(data: bytes) -> list[tuple[str, bytes]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(info.filename, z.read(info)) for info in z.infolist()]
    except Exception:  # not a parseable zip any more: nothing to restructure
        return None


def _rezip(members: list[tuple[str, bytes]], rng: random.Random) -> bytes:
    """A new ZIP of ``members`` written by :mod:`zipfile` (duplicates allowed)."""
    out = io.BytesIO()
    method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(out, "w", method) as z:
            for name, content in members:
                z.writestr(name, content)
    return out.getvalue()


def restructure(data: bytes, rng: random.Random) -> bytes:
    """Duplicate, reorder, drop, rename or replace members, then rewrite the ZIP."""
    members = _members(data)
    if not members:
        return splice(data, rng)
    action = rng.randrange(7)
    i = rng.randrange(len(members))
    if action == 0:
        name, content = members[i]
        members.insert(rng.randrange(len(members) + 1), (name, rng.choice([content, content[::-1], b""])))
    elif action == 1:
        rng.shuffle(members)
    elif action == 2:
        del members[i]
    elif action == 3:
        name, content = members[i]
        new = rng.choice(["pkl", "manifest.json", "../evil", "/abs", "a.b", "x" * 300, name + "\0", "pkl/"])
        members[i] = (new, content)
    elif action == 4:
        members = [(n, deep_pickle(rng) if n == "pkl" else c) for n, c in members]
    elif action == 5:
        members = [(n, lying_pickle(rng) if n == "pkl" else c) for n, c in members]
    else:
        members = [(n, deep_json(rng) if n == "manifest.json" else c) for n, c in members]
    return _rezip(members, rng)


MUTATIONS: list[tuple[Callable[[bytes, random.Random], bytes], float]] = [
    (bit_flip, 3), (byte_set, 2), (truncate, 2), (splice, 2), (header_lie, 4), (npy_lie, 3),
    (restructure, 3), (wrap, 1),
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three mutations of ``data``."""
    functions = [f for f, _ in MUTATIONS]
    weights = [w for _, w in MUTATIONS]
    for function in rng.choices(functions, weights, k=rng.choice([1, 1, 1, 2, 3])):
        data = function(data, rng)
    return data
