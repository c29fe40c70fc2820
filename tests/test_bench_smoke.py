"""Smoke test of the benchmark harness: ``--quick`` prints every case and writes JSON.

No timing is asserted (speed is reported by ``make bench``, never tested).
torch and safetensors (the `bench` extra) are left out so the run stays short
and works where they are not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cases import CASES
from benchmarks.stall import NAMES as ASYNC_CASES

REPO = Path(__file__).resolve().parent.parent


def test_quick_run_prints_a_row_per_case_and_the_targets(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--without", "torch,safetensors", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {(r["group"], r["name"]): r for r in report["rows"]}
    expected = [(c.group, c.name) for c in CASES] + [("async", n) for n in ASYNC_CASES]
    expected += [("S3", n) for n in ("s3fs put_file", "ours save", "s3fs cat_file", "ours restore")]
    expected += [("S3 list", "one plain listing"), ("S3 list", "ours latest_step()")]
    assert sorted(rows) == sorted(expected)
    for (group, name), row in rows.items():
        if peer := _peer(name):
            assert row["skipped"] == f"n/a ({peer} left out)"
        else:
            assert row["skipped"] is None, (group, name, row["skipped"])
            assert len(row["times"]) == 1 and row["median_s"] > 0
    assert rows[("save", "raw os.write")]["ratio_to_baseline"] == 1.0
    assert rows[("save", "ours (stored)")]["baseline"] == "raw os.write"
    assert rows[("S3 list", "ours latest_step()")]["extra"]["requests"] >= 1
    table = proc.stdout.splitlines()
    for group, name in expected:
        line = next(line for line in table if line.startswith(group) and f" {name} " in f"{line} ")
        assert ("n/a" in line) == bool(_peer(name)), line
    assert len(report["targets"]) == 14
    assert "issue-6 targets:" in proc.stdout
    scaling = [(p["series"], p["arrays"], p["nbytes"] >> 20) for p in report["scaling"]]
    assert scaling == [("arrays", 4, 1), ("arrays", 64, 1), ("bytes", 8, 1), ("bytes", 8, 4)]
    for point in report["scaling"]:
        assert point["save_peer"] == "pickle protocol 5" and point["save_ratio"] > 0
        assert point["load_peer"] == "pickle" and point["load_ratio"] > 0
    assert "scaling (median of 1" in proc.stdout and "64 x 16.0 KiB" in proc.stdout


def _peer(name: str) -> str | None:
    """The left-out peer a case belongs to, if any."""
    return next((peer for peer in ("torch", "safetensors") if peer in name), None)


def test_safe_load_benchmark_prints_its_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import safe_load

    assert safe_load.main(["--floats", "2000", "--strings", "200", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["object-heavy,", "object-heavy,", "object-heavy", "archive:"]
    assert all(line.split()[-1] in ("met", "MISSED") for line in lines[2:])
