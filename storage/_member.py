"""One framework object as an archive member (shared by the framework rules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NATIVE", "Member", "bits_dtype"]

NATIVE = {
    name: np.dtype(name).str
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64", "complex64", "complex128")
}
"""dtype names numpy has -> the dtype of the NPY member that holds them."""


def bits_dtype(itemsize: int) -> str:
    """The unsigned integer dtype that holds the bits of a dtype numpy lacks."""
    return "|u1" if itemsize == 1 else f"<u{itemsize}"


@dataclass(frozen=True)
class Member:
    """A framework object as an archive member: the persistent id kind, the
    array the NPY member holds and the manifest fields that say what it was."""

    kind: str
    array: np.ndarray
    entry: dict[str, Any]
