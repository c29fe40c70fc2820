"""Nothing is dropped silently: exporting a checkpoint whose array data hides
in the pickle (not in array members) fails and names what hides there; ``ckpt
inspect`` and snapshots show framework arrays with their framework dtype."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pytest
import torch

from luigi_checkpoint.storage import CheckpointStore
from luigi_checkpoint.storage.archive import dump
from luigi_checkpoint.storage.errors import HiddenArraysError
from luigi_checkpoint.storage.snapshot import load_snapshot, read_snapshot_manifest, snapshot_from_archive
from luigi_checkpoint.tasks.export import ExportSnapshot

from .test_cli import run


class PickledByTorch:
    """Stands for a tensor that torch's own pickling wrote into the pickle."""

    def __reduce__(self) -> tuple[Any, ...]:
        return torch.tensor, ([1.0, 2.0, 3.0],)


HIDING = {
    "masked array": (lambda: np.ma.masked_array([1.0, 2.0], mask=[0, 1]), "numpy.ma.core._mareconstruct"),
    "object array": (lambda: np.array([{"a": 1}, None], dtype=object), "multiarray._reconstruct"),
    "torch pickle": (PickledByTorch, "torch._C._VariableFunctionsClass"),
}


def state_hiding(kind: str) -> dict[str, Any]:
    return {"weights": np.arange(6.0), "hidden": HIDING[kind][0]()}


@pytest.mark.parametrize("kind", list(HIDING))
def test_ckpt_export_refuses_arrays_hidden_in_the_pickle(tmp_path: Path, kind: str) -> None:
    dump(state_hiding(kind), tmp_path / "step-000000000001.zip")
    done = run("export", str(tmp_path / "step-000000000001.zip"), str(tmp_path / "snap.zip"))
    assert done.returncode == 1, done
    assert "refusing to export" in done.stderr and HIDING[kind][1] in done.stderr
    assert "step-000000000001.zip" in done.stderr and "--select" in done.stderr
    assert not (tmp_path / "snap.zip").exists()


def test_selected_members_still_export(tmp_path: Path) -> None:
    dump(state_hiding("masked array"), tmp_path / "a.zip")
    done = run("export", str(tmp_path / "a.zip"), str(tmp_path / "snap.zip"), "--select", "weights")
    assert done.returncode == 0, done
    assert list(load_snapshot(tmp_path / "snap.zip")) == ["weights"]


def test_export_snapshot_task_fails_on_hidden_arrays(tmp_path: Path) -> None:
    with CheckpointStore(str(tmp_path / "run")) as store:
        store.save(5, state_hiding("torch pickle"))
    export = ExportSnapshot(date=date(2026, 12, 4), run_root=str(tmp_path / "run"),
                            export_root=str(tmp_path / "exports"))
    result = luigi.build([export], local_scheduler=True, detailed_summary=True)
    assert not result.scheduling_succeeded and not export.output().exists()
    with pytest.raises(HiddenArraysError, match="built by torch._C._VariableFunctionsClass"):
        snapshot_from_archive(str(tmp_path / "run" / "step-000000000005.zip"), str(tmp_path / "s.zip"))


def test_torch_states_export_completely_with_their_dtypes(tmp_path: Path) -> None:
    weight = torch.randn(4, 3).to(torch.bfloat16)
    dump({"model": {"w": weight, "b": torch.zeros(3)}, "gen": torch.Generator()}, tmp_path / "a.zip")
    done = run("inspect", str(tmp_path / "a.zip"))
    assert done.returncode == 0, done
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith(("model/", "gen"))}
    assert "torch.bfloat16 (<u2)" in rows["model/w"] and "(4, 3)" in rows["model/w"]
    assert "torch.float32 (<f4)" in rows["model/b"] and "torch.Generator (|u1)" in rows["gen"]
    done = run("export", str(tmp_path / "a.zip"), str(tmp_path / "snap.zip"))
    assert done.returncode == 0, done
    entries = {e["name"]: e for e in read_snapshot_manifest(tmp_path / "snap.zip")["arrays"]}
    assert entries["model/w"]["framework_dtype"] == "bfloat16" and entries["model/w"]["dtype"] == "<u2"
    bits = load_snapshot(tmp_path / "snap.zip")["model/w"]
    assert np.array_equal(bits, weight.view(torch.int16).numpy().view(np.uint16))
    assert json.loads(run("inspect", "--json", str(tmp_path / "snap.zip")).stdout)["arrays"][0]["framework"] == "torch"
