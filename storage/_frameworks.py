"""Framework arrays as NPY members: torch tensors, parameters and generators.

Theano stored every ``ndarray`` and every ``CudaNdarray`` of a pickled object
as an NPY member; training states today hold torch tensors. The archive
pickler hands each torch object it meets to :func:`as_member`, which turns it
into the NPY member's array plus the manifest fields that say what it was;
the pickle holds only the persistent id ``torch.<member>``. Loading hands the
member back to :func:`restore`, which rebuilds the object with torch's own
constructors (``torch.from_numpy``, ``torch.Generator``): no torch pickle code
ever runs, so loading a torch training state is safe by default.

What becomes a member (exactly these types; subclasses stay in the pickle):

- ``torch.Tensor`` and ``torch.nn.Parameter``, strided (dense), on any device
  (a CUDA tensor is copied to host); ``requires_grad`` and the device it was on
  are recorded. Loaded, it is a tensor on ``map_location`` (default CPU) with
  the saved dtype, shape and ``requires_grad``; a parameter is a parameter.
- ``torch.Generator``: its state (bytes, as ``get_state()`` returns them) is
  the member, its device, seed and offset are in the manifest.

Sharing: the same tensor object met twice is one member and loads as one
object. Distinct tensors that are views of one storage (``a`` and ``a[2:]``)
are distinct members and load as independent tensors, as numpy views do.

dtypes numpy lacks (``bfloat16``, ``complex32``, the float8 and float4
variants) are stored as their bits: an unsigned integer array of the same
item size (``<u2`` for bfloat16), which ``numpy.load`` reads as such; the
manifest's ``framework_dtype`` names the true dtype and :func:`restore` views
the bits as it (``ml_dtypes`` views them in numpy:
``a.view(ml_dtypes.bfloat16)``). Sparse, quantized, nested and meta tensors
are refused when saving.

With ``as_numpy=True``, or when torch cannot be imported (then with a
:class:`FrameworkMissingWarning`), members load as the arrays ``numpy.load``
returns: tensors' data (or bits) and generators' state bytes.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArchiveError, UnloadableArchiveError, UnsupportedArrayError

__all__ = ["KINDS", "FrameworkMissingWarning", "Member", "Restorer", "as_member"]

KINDS = ("torch",)
"""Persistent id kinds of framework members (besides numpy's ``ndarray``)."""

# torch dtype name -> dtype of the NPY member that holds it
_NATIVE = {
    name: np.dtype(name).str
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64", "complex64", "complex128")
}
_BITS = {
    "bfloat16": "<u2", "complex32": "<u4", "float8_e4m3fn": "|u1", "float8_e4m3fnuz": "|u1",
    "float8_e5m2": "|u1", "float8_e5m2fnuz": "|u1", "float8_e8m0fnu": "|u1",
    "float4_e2m1fn_x2": "|u1",
}
STORED_AS = {**_NATIVE, **_BITS}
_SIGNED_VIEW = {2: "int16", 4: "int32", 1: "uint8"}  # torch views bits through these
_TYPES = ("Tensor", "Parameter", "Generator")


class FrameworkMissingWarning(UserWarning):
    """A framework's arrays were loaded as numpy arrays because it is not installed."""


@dataclass(frozen=True)
class Member:
    """A framework object as an archive member: the persistent id kind, the
    array the NPY member holds and the manifest fields that say what it was."""

    kind: str
    array: np.ndarray
    entry: dict[str, Any]


def framework_types() -> frozenset[type]:
    """The types :func:`as_member` takes, among the frameworks imported so far
    (a state cannot hold a torch tensor unless torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return frozenset()
    return frozenset({torch.Tensor, torch.nn.Parameter, torch.Generator})


def as_member(obj: Any) -> Member:
    """``obj`` (of a type in :func:`framework_types`) as a member.

    Raises :class:`UnsupportedArrayError` for tensors that have no dense data.
    """
    import torch

    if type(obj) is torch.Generator:
        entry = {"type": "Generator", "device": str(obj.device), "seed": obj.initial_seed()}
        if obj.device.type != "cpu":
            entry["offset"] = obj.get_offset()
        return Member("torch", obj.get_state().numpy(), {"framework": "torch", **entry})
    if obj.layout is not torch.strided or obj.is_quantized or obj.is_nested or obj.is_meta:
        raise UnsupportedArrayError(
            f"a torch tensor of layout {obj.layout}, dtype {obj.dtype} on {obj.device} has no "
            "dense data to store: convert it (for example .to_dense() or .dequantize()) first"
        )
    name = str(obj.dtype).removeprefix("torch.")
    if name not in STORED_AS:
        raise UnsupportedArrayError(f"torch dtype {obj.dtype} cannot be stored (no numpy layout)")
    tensor = obj.detach().resolve_conj().resolve_neg()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if name in _BITS:
        bits = tensor.view(getattr(torch, _SIGNED_VIEW[tensor.element_size()])).numpy()
        array = bits.view(_BITS[name])
    else:
        array = tensor.numpy()
    entry = {
        "framework": "torch",
        "type": type(obj).__name__,
        "framework_dtype": name,
        "requires_grad": bool(obj.requires_grad),
        "device": str(obj.device),
    }
    return Member("torch", array, entry)


class Restorer:
    """Rebuilds framework objects from their members during one load.

    ``map_location`` is the torch device tensors and generators are put on
    (default: CPU); ``as_numpy`` returns the members' numpy arrays instead.
    ``source`` names the archive in errors and warnings.
    """

    def __init__(self, source: str, *, map_location: Any = None, as_numpy: bool = False) -> None:
        self._source = source
        self._map_location = map_location
        self._as_numpy = as_numpy
        self._missing: set[str] = set()

    def restore(self, kind: str, name: str, array: np.ndarray, entry: Any) -> Any:
        """The object member ``name`` holds, from its ``array`` and manifest ``entry``."""
        where = f"{self._source}: member {name!r}"
        _check_entry(where, kind, array, entry)
        if self._as_numpy:
            return array
        try:
            import torch
        except ImportError:
            if kind not in self._missing:
                self._missing.add(kind)
                warnings.warn(
                    f"{self._source}: {kind} is not installed, so its tensors load as the numpy "
                    "arrays numpy.load reads (dtypes numpy lacks as their bits); install "
                    f"luigi-checkpoint[{kind}] to load them as {kind} objects",
                    FrameworkMissingWarning,
                    stacklevel=2,
                )
            return array
        try:
            return _torch_object(torch, array, entry, self._map_location)
        except Exception as exc:  # torch raises what it likes (AssertionError: no CUDA)
            raise UnloadableArchiveError(
                f"{where}: torch cannot rebuild the {entry['type']} (map_location={self._map_location!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from None


def _check_entry(where: str, kind: str, array: np.ndarray, entry: Any) -> None:
    if not isinstance(entry, dict) or entry.get("framework") != kind or entry.get("type") not in _TYPES:
        raise ArchiveError(f"{where}: persistent id of kind {kind!r} without a manifest entry of that framework")
    if entry["type"] == "Generator":
        if array.dtype != np.uint8 or array.ndim != 1 or not isinstance(entry.get("seed"), int):
            raise ArchiveError(f"{where}: a torch Generator's state must be 1-D uint8 bytes and a seed")
        return
    stored = STORED_AS.get(entry.get("framework_dtype"))  # type: ignore[arg-type]
    if stored is None or array.dtype.str != stored or not isinstance(entry.get("requires_grad"), bool):
        raise ArchiveError(
            f"{where}: manifest dtype {entry.get('framework_dtype')!r} does not match "
            f"the member's {array.dtype.str} (or requires_grad is missing)"
        )


def _torch_object(torch: Any, array: np.ndarray, entry: dict[str, Any], map_location: Any) -> Any:
    device = torch.device(map_location if map_location is not None else "cpu")
    if entry["type"] == "Generator":
        generator = torch.Generator(device=device)
        generator.manual_seed(entry["seed"])
        generator.set_state(torch.from_numpy(np.array(array)))
        if "offset" in entry and device.type != "cpu":
            generator.set_offset(entry["offset"])
        return generator
    if not array.flags.writeable:  # mapped read-only: a tensor must own writable memory
        array = np.array(array)
    name = entry["framework_dtype"]
    if name in _BITS:
        width = array.dtype.itemsize
        tensor = torch.from_numpy(array.view(_SIGNED_VIEW[width])).view(getattr(torch, name))
    else:
        tensor = torch.from_numpy(array)
    if device.type != "cpu":
        tensor = tensor.to(device)
    if entry["type"] == "Parameter":
        return torch.nn.Parameter(tensor, requires_grad=entry["requires_grad"])
    return tensor.requires_grad_(entry["requires_grad"])
