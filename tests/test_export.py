"""ExportSnapshot: dated numpy-only snapshots of a run's newest checkpoint."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode
from luigi.task_register import Register
from luigi.tools.range import RangeDaily

from luigi_checkpoint.pipeline.mlp import ExportMLP, TrainMLP
from luigi_checkpoint.storage import archive
from luigi_checkpoint.storage.snapshot import read_snapshot_manifest
from luigi_checkpoint.tasks.export import ExportSnapshot
from tests.conftest import BUCKET
from tests.helpers_luigi import BASE, ForkedBuild, SlowTrainMLP, run_luigi, wait_for, write_cfg

PARAMS = {"total_steps": 40, "checkpoint_every": 10, "hidden": "8", "samples": 128, "features": 4, "batch_size": 8}
DAY = date(2026, 11, 28)


def trained(root: str, options: dict[str, Any] | None = None) -> TrainMLP:
    task = TrainMLP(checkpoint_root=root, storage_options=options, **PARAMS)
    assert luigi.build([task], local_scheduler=True)
    return task


def test_export_writes_the_newest_checkpoint_as_a_numpy_only_snapshot(tmp_path: Path) -> None:
    train = trained(str(tmp_path / "runs"))
    export = ExportMLP(date=DAY, checkpoint_root=str(tmp_path / "runs"), export_root=str(tmp_path / "exports"), **PARAMS)
    assert export.output().path == str(tmp_path / "exports" / "TrainMLP" / train.run_id() / "2026-11-28" / "snapshot.zip")
    assert luigi.build([export], local_scheduler=True)

    source = train.checkpoint_store().url_of(40)
    expected = archive.read_arrays(source)
    with np.load(export.output().path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "manifest.json"}
    assert arrays.keys() == expected.keys() and "weights/0" in arrays
    for name, array in expected.items():
        assert np.array_equal(arrays[name], array), name
    loaded = export.output().load()
    assert all(np.array_equal(loaded[name], array) for name, array in expected.items())
    manifest = read_snapshot_manifest(export.output().path)
    assert manifest["source"] == {"url": source, "step": 40}
    assert manifest["metadata"]["export_date"] == "2026-11-28"


def test_export_selects_arrays_by_name_or_pattern(tmp_path: Path) -> None:
    train = trained(str(tmp_path / "runs"))
    export = ExportSnapshot(
        date=DAY, run_root=train.run_url(), export_root=str(tmp_path / "exports"), select=["weights/*", "biases/0"]
    )
    assert luigi.build([export], local_scheduler=True)
    assert sorted(export.output().load()) == ["biases/0", "weights/0", "weights/1"]


def test_export_is_idempotent(tmp_path: Path) -> None:
    trained(str(tmp_path / "runs"))
    export = ExportMLP(date=DAY, checkpoint_root=str(tmp_path / "runs"), export_root=str(tmp_path / "exports"), **PARAMS)
    assert luigi.build([export], local_scheduler=True)
    path = Path(export.output().path)
    content, stamp = path.read_bytes(), path.stat().st_mtime_ns
    result = luigi.build([export], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.SUCCESS
    assert "complete ones were encountered" in result.summary_text
    assert path.read_bytes() == content and path.stat().st_mtime_ns == stamp


def test_export_waits_while_the_run_has_no_checkpoint(tmp_path: Path) -> None:
    export = ExportSnapshot(date=DAY, run_root=str(tmp_path / "runs" / "TrainMLP" / "0123456789"), export_root=str(tmp_path / "exports"))
    result = luigi.build([export], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.MISSING_EXT
    assert not export.output().exists()


def test_exporting_a_run_still_training_gives_its_newest_checkpoint(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    params = {**PARAMS, "total_steps": 2000, "checkpoint_every": 20, "keep_last": 1000, "step_seconds": 0.005}
    cfg = write_cfg(tmp_path / "luigi.cfg", BASE)
    training = SlowTrainMLP(checkpoint_root=root, **params)
    child = ForkedBuild.start(SlowTrainMLP, {**params, "checkpoint_root": root}, cfg=cfg, log=tmp_path / "train.log")
    try:
        store = training.checkpoint_store()
        wait_for(lambda: (store.latest_step() or 0) >= 40, interval=0.05, what="two checkpoints")
        export = ExportSnapshot(date=DAY, run_root=training.run_url(), export_root=str(tmp_path / "exports"))
        assert luigi.build([export], local_scheduler=True)
        assert child.alive(), "the run finished: it was not exported while training"
    finally:
        child.kill()
    step = read_snapshot_manifest(export.output().path)["source"]["step"]
    assert step >= 40 and step % 20 == 0 and step < 2000
    expected = archive.read_arrays(store.url_of(step))
    snapshot = export.output().load()
    assert all(np.array_equal(snapshot[name], array) for name, array in expected.items())


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_range_daily_creates_one_snapshot_per_day_and_backfills_only_missing_days(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local":
        runs, exports, options = str(tmp_path / "runs"), str(tmp_path / "exports"), None
    else:
        options = request.getfixturevalue("s3").storage_options
        runs, exports = f"s3://{BUCKET}/runs", f"s3://{BUCKET}/exports"
    train = trained(runs, options)
    of_params = {"checkpoint_root": runs, "export_root": exports, "storage_options": options, **PARAMS}
    ExportMLP(date=date(2026, 11, 3), **of_params).run()

    def span() -> RangeDaily:
        Register.clear_instance_cache()  # a new RangeDaily looks again
        return RangeDaily(of=ExportMLP, of_params=of_params, start=date(2026, 11, 1), stop=date(2026, 11, 6), now=_epoch(date(2026, 11, 20)))

    assert [t.date.day for t in span().requires()] == [1, 2, 4, 5]
    assert luigi.build([span()], local_scheduler=True)
    fs = ExportMLP(date=DAY, **of_params).output().fs
    folder = f"{exports}/TrainMLP/{train.run_id()}"
    days = sorted(path.split("/")[-2] for path in fs.listdir(folder))
    assert days == [f"2026-11-0{d}" for d in range(1, 6)]
    assert span().requires() == []


def test_range_daily_from_the_command_line(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path / "luigi.cfg", BASE, {"checkpoint": {"root": tmp_path / "runs"}, "export": {"root": tmp_path / "exports"}})
    train = trained(str(tmp_path / "runs"))
    code, output = run_luigi(
        "RangeDaily",
        {"of": "ExportMLP", "start": "2026-11-01", "stop": "2026-11-04", "of_params": PARAMS, "now": _epoch(DAY)},
        cfg=cfg, log=tmp_path / "range.log",
    )
    assert code == 0, output
    snapshots = sorted((tmp_path / "exports" / "TrainMLP" / train.run_id()).glob("*/snapshot.zip"))
    assert [p.parent.name for p in snapshots] == ["2026-11-01", "2026-11-02", "2026-11-03"]
