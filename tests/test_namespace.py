"""The project installs as one namespace, ``luigi_checkpoint``, whatever folder it runs from."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_packages_import_from_any_folder(tmp_path: Path) -> None:
    proc = _python(
        "import luigi_checkpoint.storage, luigi_checkpoint.tasks, luigi_checkpoint.pipeline.mlp", tmp_path
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["storage", "tasks", "pipeline"])
def test_bare_folder_names_are_not_importable(name: str, tmp_path: Path) -> None:
    proc = _python(f"import {name}", tmp_path)
    assert proc.returncode == 1
    assert f"No module named '{name}'" in proc.stderr


def test_a_users_own_tasks_module_does_not_shadow_ours(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("RAISED = 'the user module'\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    proc = _python(
        "import tasks, luigi_checkpoint.tasks as ours; "
        "print(tasks.RAISED, ours.TrainingTask.__module__)",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["the", "user", "module", "luigi_checkpoint.tasks.training"]


@pytest.mark.slow
def test_the_wheel_holds_only_the_luigi_checkpoint_namespace(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("luigi_checkpoint-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"luigi_checkpoint", f"luigi_checkpoint-{version('luigi-checkpoint')}.dist-info"}
    assert "luigi_checkpoint/storage/archive.py" in names
    assert "luigi_checkpoint/tasks/training.py" in names
    assert "luigi_checkpoint/pipeline/mlp.py" in names
    assert not [n for n in names if n.startswith("luigi_checkpoint/tests/")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ckpt = luigi_checkpoint.storage.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
