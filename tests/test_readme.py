"""The README's Python examples run as written (each in a fresh interpreter).

Examples that need a framework extra are tagged (```` ```python torch ````) and
run by that framework's tests, which only the lane with the extras collects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def examples(tag: str = "") -> list[str]:
    """The README's python blocks tagged ``tag`` (none: the untagged ones)."""
    return re.findall(rf"```python{' ' + tag if tag else ''}\n(.*?)```", README.read_text(), flags=re.S)


def run_example(code: str, folder: Path) -> None:
    """Run one example in a fresh interpreter in ``folder``; it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


EXAMPLES = examples()


def test_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code: str, tmp_path: Path) -> None:
    run_example(code, tmp_path)
