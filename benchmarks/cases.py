"""The local cases: how each format saves, loads and opens the same state.

A save case writes ``state`` to a path; a load case reads a file some save case
wrote and returns the state fully materialised (every byte in memory, or every
page of a mapping touched); an open case maps without touching. ``requires``
names the modules a case imports; a case whose module is missing is skipped
and shown as ``n/a``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .state import Layout, read_raw, write_raw

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Case:
    """One measured operation: ``group`` is save, load or open."""

    group: str
    name: str
    file: str  # the file a save case writes, or a load/open case reads
    run: Callable[..., Any]
    requires: tuple[str, ...] = ()
    baseline: bool = False
    fsync: bool = False

    def missing(self, without: tuple[str, ...] = ()) -> str | None:
        """Why a required module is missing, if one is."""
        return unavailable(self.requires, without)


def unavailable(modules: tuple[str, ...], without: tuple[str, ...] = ()) -> str | None:
    """Why the first missing one of ``modules`` is missing (``without``: treated as missing)."""
    for module in modules:
        if module.split(".")[0] in without:
            return f"{module} left out"
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    return None


def _save_ours(state: dict[str, np.ndarray], path: str) -> None:
    from luigi_checkpoint.storage.archive import dump

    with open(path, "wb") as f:
        dump(state, f)


def _save_ours_fsync(state: dict[str, np.ndarray], path: str) -> None:
    from luigi_checkpoint.storage.archive import dump

    dump(state, path)


def _save_raw_fsync(state: dict[str, np.ndarray], path: str) -> None:
    """Same policy as an archive written to a path: temp, fsync, replace, fsync folder."""
    temp = f"{path}.partial"
    write_raw(state, temp, fsync=True)
    os.replace(temp, path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_pickle(state: dict[str, np.ndarray], path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=5)


def _save_savez(state: dict[str, np.ndarray], path: str) -> None:
    np.savez(path, **state)


def _save_safetensors(state: dict[str, np.ndarray], path: str) -> None:
    from safetensors.numpy import save_file

    save_file(state, path)


def _save_torch(state: dict[str, np.ndarray], path: str) -> None:
    import torch

    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def _load_ours(layout: Layout, path: str) -> Any:
    from luigi_checkpoint.storage.archive import load

    return load(path)


def _load_ours_mmap_touched(layout: Layout, path: str) -> Any:
    from luigi_checkpoint.storage.archive import load

    state = load(path, mmap=True)
    for name in layout.names:
        touch_pages(state[name])
    return state


def _load_raw(layout: Layout, path: str) -> Any:
    return read_raw(layout, path)


def _load_numpy(layout: Layout, path: str) -> Any:
    with np.load(path) as archive:
        return {name: archive[name] for name in layout.names}


def _load_pickle(layout: Layout, path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def _load_safetensors(layout: Layout, path: str) -> Any:
    from safetensors.numpy import load_file

    return load_file(path)


def _load_torch(layout: Layout, path: str) -> Any:
    import torch

    return torch.load(path)


def _open_ours_mmap(layout: Layout, path: str) -> Any:
    from luigi_checkpoint.storage.archive import load

    return load(path, mmap=True)


def _open_torch_mmap(layout: Layout, path: str) -> Any:
    import torch

    return torch.load(path, mmap=True)


def touch_pages(array: np.ndarray) -> int:
    """Read one byte of every page of a (mapped) array; returns their sum."""
    flat = array.reshape(-1).view(np.uint8)
    return int(flat[::PAGE].sum(dtype=np.uint64))


OURS = ("luigi_checkpoint.storage.archive",)

CASES: tuple[Case, ...] = (
    Case("save", "raw os.write", "raw.bin", lambda s, p: write_raw(s, p), baseline=True),
    Case("save", "ours (stored)", "ours.zip", _save_ours, OURS),
    Case("save", "pickle protocol 5", "state.pkl", _save_pickle),
    Case("save", "np.savez", "state.npz", _save_savez),
    Case("save", "safetensors", "state.safetensors", _save_safetensors, ("safetensors",)),
    Case("save", "torch.save", "state.pt", _save_torch, ("torch",)),
    Case("save", "raw os.write + fsync", "raw-fsync.bin", _save_raw_fsync, baseline=True, fsync=True),
    Case("save", "ours (stored) + fsync", "ours-fsync.zip", _save_ours_fsync, OURS, fsync=True),
    Case("load", "raw readinto np.empty", "raw.bin", _load_raw, baseline=True),
    Case("load", "ours", "ours.zip", _load_ours, OURS),
    Case("load", "ours mmap=True, pages touched", "ours.zip", _load_ours_mmap_touched, OURS),
    Case("load", "np.load of our archive", "ours.zip", _load_numpy, OURS),
    Case("load", "pickle", "state.pkl", _load_pickle),
    Case("load", "safetensors", "state.safetensors", _load_safetensors, ("safetensors",)),
    Case("load", "torch.load", "state.pt", _load_torch, ("torch",)),
    Case("open", "ours mmap=True", "ours.zip", _open_ours_mmap, OURS),
    Case("open", "torch.load mmap=True", "state.pt", _open_torch_mmap, ("torch",)),
)


def case_named(group: str, name: str) -> Case:
    for case in CASES:
        if case.group == group and case.name == name:
            return case
    raise KeyError(f"no {group} case named {name!r}")
