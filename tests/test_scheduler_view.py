"""What a person sees: luigid's task list through its API, its web page rendered by
a real headless Chromium, the live bars on a terminal (training, ``ckpt verify``
and ``export`` of a big archive). Real ``luigi`` processes, a real ``luigid`` on
loopback, a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.snapshot import load_snapshot
from luigi_checkpoint.storage.terminal import BIG

from .helpers_luigi import BASE, LUIGI, REPO, LuigiProcess, SlowTrainMLP, cli_params, wait_for, write_cfg

PARAMS = {
    "total_steps": 2000, "hidden": "16", "samples": 256, "features": 8, "batch_size": 16, "seed": 5,
    "checkpoint_every": 50, "status_seconds": 0.1, "step_seconds": 0.02,
}
CKPT = str(LUIGI.with_name("ckpt"))
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
SCREEN = (1280, 900)


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.mark.slow  # a luigid, a training run and two browser starts: the default lane only
def test_luigid_shows_checkpoint_age_run_folder_and_moving_progress(luigid: Any, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    cfg = write_cfg(tmp_path / "luigi.cfg", BASE, {"checkpoint": {"root": str(root)}})
    proc = LuigiProcess.start(
        "SlowTrainMLP", PARAMS, cfg=cfg, log=tmp_path / "worker.log",
        extra=("--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid.port)),
    )
    folder = SlowTrainMLP(checkpoint_root=str(root), **PARAMS).checkpoint_store().root_url
    message = re.compile(
        rf"checkpoint (?P<saved>\d+) \d+s ago, {re.escape(folder)}, step (?P<step>\d+)/2000, loss=\S+, accuracy=\S+"
    )

    def running() -> dict[str, Any] | None:
        for task in luigid.task_list(status="RUNNING").values():
            if message.fullmatch(task.get("status_message") or ""):
                return task
        return None

    try:
        first = wait_for(running, interval=0.05, what="a status message with a checkpoint")
        # Before 1% of the run is done, the bar already moves (no 0% for most of a long run).
        assert 0 < first["progress_percentage"] < 100
        later = wait_for(
            lambda: (task := running()) and task["progress_percentage"] > first["progress_percentage"] and task,
            interval=0.05, what="the progress percentage to move",
        )
        assert int(message.fullmatch(later["status_message"])["step"]) < 2000

        chromium = browser()
        if chromium is None:
            pytest.skip("no Chromium here (make test installs chromium-headless-shell with apt)")
        page = f"http://127.0.0.1:{luigid.port}/static/visualiser/index.html#tab=workers"
        common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                  f"--window-size={SCREEN[0]},{SCREEN[1]}"]
        dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        bars = [float(v) for v in re.findall(r'taskProgressBar"[^>]*aria-valuenow="([\d.]+)"', dom)]
        assert "SlowTrainMLP" in dom
        assert bars and 0 < bars[0] < 100, dom[-2000:]

        shot = tmp_path / "luigid.png"
        subprocess.run([*common, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == SCREEN
    finally:
        proc.process.send_signal(signal.SIGTERM)
        proc.wait()


def on_a_terminal(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo-terminal: (exit code, what it showed)."""
    main, terminal = pty.openpty()
    process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env={**env, "COLUMNS": "160"}, cwd=cwd)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    return process.wait(timeout=120), output.decode(errors="replace")


def test_a_terminal_gets_a_live_bar_instead_of_log_lines(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path / "luigi.cfg", BASE, {"checkpoint": {"root": str(tmp_path / "runs")}})
    params = {**PARAMS, "total_steps": 60, "checkpoint_every": 20, "step_seconds": 0.01}
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(cfg), "PYTHONPATH": str(REPO)}
    command = [str(LUIGI), "--module", "tests.helpers_luigi", "SlowTrainMLP", *cli_params(params), "--local-scheduler"]
    code, text = on_a_terminal(command, env, tmp_path)
    assert code == 0, text
    frames = re.findall(r"\r\x1b\[K\[([#.]+)\] step (\d+)/60", text)
    assert frames, text
    assert frames[-1] == ("#" * len(frames[-1][0]), "60")
    assert [int(step) for _, step in frames] == sorted(int(step) for _, step in frames)
    assert not re.search(r"INFO: SlowTrainMLP \w+: step \d+/60", text)  # the bar replaces the log lines


def test_ckpt_verify_and_export_of_a_big_archive_draw_a_bar_on_a_terminal(tmp_path: Path) -> None:
    big = tmp_path / "run" / "step-000000000001.zip"
    CheckpointStore(big.parent).save(1, {"w": np.arange(BIG // 8 + 1024, dtype=np.float64)})
    size_mib = big.stat().st_size >> 20
    code, shown = on_a_terminal([CKPT, "verify", str(big)], dict(os.environ), tmp_path)
    assert code == 0, shown
    assert f"verifying {big}: 100% of {size_mib} MiB" in shown and "\r\x1b[K[" in shown
    assert shown.rstrip().endswith("1 checked, 0 bad")

    code, shown = on_a_terminal([CKPT, "export", str(big.parent), str(tmp_path / "w.zip")], dict(os.environ), tmp_path)
    assert code == 0, shown
    assert f"exporting {big}: 100% of {size_mib} MiB" in shown
    assert np.array_equal(load_snapshot(tmp_path / "w.zip")["w"], np.arange(BIG // 8 + 1024, dtype=np.float64))

    piped = subprocess.run([CKPT, "verify", str(big)], capture_output=True, text=True, timeout=120)
    assert piped.stdout == f"ok   {big}\n1 checked, 0 bad\n" and piped.stderr == ""  # no bar off a terminal
