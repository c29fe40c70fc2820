"""torch objects as members: ``torch.Tensor``, ``torch.nn.Parameter`` and
``torch.Generator`` (exactly these types; subclasses stay in the pickle).

A tensor is stored strided (dense), from any device (a CUDA tensor is copied
to host), with its dtype, ``requires_grad`` and device in the manifest; it
loads on ``map_location`` (default CPU) with the saved dtype, shape and
``requires_grad``; a parameter loads as a parameter. A generator's state
(bytes, as ``get_state()`` returns them) is the member, its device, seed and
offset are in the manifest. Sparse, quantized, nested and meta tensors are
refused when saving. dtypes numpy lacks are stored as their bits
(:mod:`._frameworks`).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ._member import NATIVE, Member, bits_dtype
from ._reading import Allocate
from .errors import UnsupportedArrayError

__all__ = ["TYPES", "allocator", "member", "problem", "rebuild", "types"]

TYPES = ("Tensor", "Parameter", "Generator")
_BITS = {
    name: bits_dtype(size)
    for name, size in (("bfloat16", 2), ("complex32", 4), ("float8_e4m3fn", 1), ("float8_e4m3fnuz", 1),
                       ("float8_e5m2", 1), ("float8_e5m2fnuz", 1), ("float8_e8m0fnu", 1),
                       ("float4_e2m1fn_x2", 1))
}
STORED_AS = {**NATIVE, **_BITS}
_SIGNED_VIEW = {2: "int16", 4: "int32", 1: "uint8"}  # torch views bits through these


def types(torch: ModuleType) -> tuple[type, ...]:
    """The torch types stored as members."""
    return (torch.Tensor, torch.nn.Parameter, torch.Generator)


def member(obj: Any) -> Member:
    """A torch tensor, parameter or generator as a member."""
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


def allocator(torch: ModuleType) -> Allocate:
    """Memory for a member's array from torch's allocator (the tensor rebuilt
    from it shares it), as ``torch.load`` allocates; numpy asks the kernel for
    huge pages above 4 MiB, which many machines fault in far more slowly."""

    def allocate(shape: tuple[int, ...], dtype: np.dtype, order: str) -> np.ndarray:
        flat = torch.empty(math.prod(shape) * dtype.itemsize, dtype=torch.uint8).numpy()
        return flat.view(dtype).reshape(shape, order=order)

    return allocate


def problem(array: np.ndarray, entry: dict[str, Any]) -> str | None:
    """Why ``array`` and ``entry`` are not a torch object this module wrote (None: they are)."""
    if entry["type"] == "Generator":
        if array.dtype != np.uint8 or array.ndim != 1 or not isinstance(entry.get("seed"), int):
            return "a torch Generator's state must be 1-D uint8 bytes and a seed"
        return None
    stored = STORED_AS.get(entry.get("framework_dtype"))  # type: ignore[arg-type]
    if stored is None or array.dtype.str != stored or not isinstance(entry.get("requires_grad"), bool):
        return (f"manifest dtype {entry.get('framework_dtype')!r} does not match the member's "
                f"{array.dtype.str} (or requires_grad is missing)")
    return None


def rebuild(torch: ModuleType, array: np.ndarray, entry: dict[str, Any], map_location: Any) -> Any:
    """The torch object of a checked member, on ``map_location`` (default CPU)."""
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
