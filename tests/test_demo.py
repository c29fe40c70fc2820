"""`make demo` from a fresh clone: crash, resume, export, inspect; twice."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_luigi import REPO


def make_demo(clone: Path) -> str:
    # The clone shares the project's .venv; "-o" keeps make from reinstalling
    # the project into it from the clone.
    done = subprocess.run(
        ["make", "-o", ".venv/.installed-test", "demo"], cwd=clone, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.mark.slow
def test_make_demo_resumes_after_the_planned_crash_exports_and_runs_twice(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO / ".venv")

    first = make_demo(clone)
    assert "simulated crash at step 120" in first
    resumed = re.search(r"resumed from step 100 of 300, (\S+)", first)
    assert resumed and resumed.group(1).endswith("/step-000000000100.zip")
    assert Path(resumed.group(1)).parent.parent.parent == clone / "runs"
    assert "failed tasks but they all succeeded in a retry" in first
    assert re.search(r"exported step 300 of \S+ to \S+/snapshot\.zip", first)
    assert re.search(r"== ckpt ls runs/TrainMLP/\w+/\n.*STEP", first)
    assert "== ckpt inspect exports/TrainMLP/" in first and "weights/0" in first

    today = datetime.now(timezone.utc).date().isoformat()
    [snapshot] = (clone / "exports" / "TrainMLP").glob(f"*/{today}/snapshot.zip")
    with np.load(snapshot, allow_pickle=False) as npz:
        assert npz["weights/0"].shape == (32, 64)

    second = make_demo(clone)
    assert "resumed from" not in second and "simulated crash" not in second
    assert "complete ones were encountered" in second
