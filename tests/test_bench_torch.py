"""Smoke test of the torch benchmark: a tiny state, every case timed, ratios to
torch printed (no timing is asserted: speed is reported by ``make bench-torch``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.torch_state import CASES

REPO = Path(__file__).resolve().parent.parent


def test_quick_run_prints_every_case_with_its_ratio_to_torch(tmp_path: Path) -> None:
    out = tmp_path / "torch.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.torch_state", "--size-mb", "8", "--repeats", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["state_bytes"] > 4 << 20
    assert sorted(report["times"]) == sorted(name for _, name, _, _ in CASES)
    for group, name, _, _ in CASES:
        line = next(line for line in proc.stdout.splitlines() if f" {name} " in line)
        assert line.startswith(group) and line.endswith("x"), line
    assert all(len(times) == 1 and times[0] > 0 for times in report["times"].values())
