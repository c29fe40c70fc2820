"""Shared fixtures: a real S3 protocol server on loopback (:mod:`tests.s3server`)
and a storage root parametrized over local disk, ``file://``, ``memory://`` and ``s3://``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest
import requests

from luigi_checkpoint.storage.fs import resolve

from .s3server import S3Server, free_port
from .s3server import s3_server as s3_server_of_choice

BUCKET = "ckpt-test"
_FOLDERS = ("storage", "tasks", "pipeline")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Tests import the project only as ``luigi_checkpoint.*``: a module imported
    from the repository's folders by their bare names would be a second copy
    (two distinct ``CheckpointError`` classes, say)."""
    strays = sorted(name for name in sys.modules if name.split(".")[0] in _FOLDERS)
    if strays:
        raise pytest.UsageError(f"imported outside the luigi_checkpoint namespace: {', '.join(strays)}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The S3 server that ``LUIGI_CHECKPOINT_S3`` chooses (moto by default, see
    :mod:`tests.s3server`), for the whole session."""
    log = tmp_path_factory.mktemp("s3server") / "server.log"
    with s3_server_of_choice(in_process=True, log=log) as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    """The S3 server, emptied, with bucket ``ckpt-test`` and fresh fsspec caches."""
    fsspec.AbstractFileSystem.clear_instance_cache()
    s3_server.empty_bucket(BUCKET)
    yield s3_server
    fsspec.AbstractFileSystem.clear_instance_cache()


@pytest.fixture(autouse=True)
def _fresh_fsspec() -> Iterator[None]:
    fsspec.AbstractFileSystem.clear_instance_cache()
    yield
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    fsspec.AbstractFileSystem.clear_instance_cache()


@dataclass(frozen=True)
class Root:
    """A folder on one kind of storage: ``url`` plus its ``storage_options``."""

    kind: str
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def join(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])

    def fs(self) -> fsspec.AbstractFileSystem:
        return resolve(self.url, self.storage_options).fs


STORAGE_KINDS = ["local", "file", "memory", "s3"]


def make_root(kind: str, tmp_path: Any, request: pytest.FixtureRequest) -> Root:
    name = f"root-{uuid.uuid4().hex[:8]}"
    if kind == "local":
        return Root(kind, os.fspath(tmp_path / name))
    if kind == "file":
        return Root(kind, (tmp_path / name).as_uri())
    if kind == "memory":
        return Root(kind, f"memory://{name}")
    server: S3Server = request.getfixturevalue("s3")
    return Root(kind, f"s3://{BUCKET}/{name}", server.storage_options)


@pytest.fixture(params=STORAGE_KINDS)
def root(request: pytest.FixtureRequest, tmp_path: Any) -> Root:
    """An empty folder on local disk, ``file://``, ``memory://`` or S3."""
    return make_root(request.param, tmp_path, request)


class Luigid:
    """A real ``luigid`` central scheduler on 127.0.0.1 with its own state file."""

    DEFAULT_CONFIG = "[scheduler]\nretry_delay = 1\nworker_disconnect_delay = 5\n"

    def __init__(self, folder: Path, config: str = DEFAULT_CONFIG) -> None:
        self.folder = folder
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_path = folder / "luigid-state.pickle"
        self.log_path = folder / "luigid.log"  # stdout and stderr
        self.logdir = folder / "logs"  # luigid's own log: luigi-server.log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        luigid = Path(sys.executable).with_name("luigid")
        self.logdir.mkdir(parents=True, exist_ok=True)
        # The scheduler reads its settings from LUIGI_CONFIG_PATH: keep it empty
        # so a developer's config cannot leak in; state_path comes from the CLI.
        env = {**os.environ, "LUIGI_CONFIG_PATH": str(self.folder / "luigid.cfg")}
        (self.folder / "luigid.cfg").write_text(self.config)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(luigid), "--address", "127.0.0.1", "--port", str(self.port),
                 "--state-path", str(self.state_path), "--logdir", str(self.logdir)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"luigid exited: {self.log_path.read_text()}")
            try:
                self.task_list()
                return
            except (requests.ConnectionError, requests.HTTPError):
                time.sleep(0.1)
        raise RuntimeError(f"luigid did not answer on {self.url}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def rpc(self, method: str, **args: Any) -> Any:
        """Call the scheduler's JSON API, e.g. ``rpc("task_list", status="RUNNING")``."""
        response = requests.get(
            f"{self.url}/api/{method}", params={"data": json.dumps(args)}, timeout=10
        )
        response.raise_for_status()
        return response.json()["response"]

    def task_list(self, status: str = "", upstream_status: str = "") -> dict[str, Any]:
        return self.rpc("task_list", status=status, upstream_status=upstream_status)


@pytest.fixture
def luigid(tmp_path: Path) -> Iterator[Luigid]:
    """A running ``luigid`` on a free loopback port, stopped after the test."""
    server = Luigid(tmp_path / "luigid")
    server.start()
    try:
        yield server
    finally:
        server.stop()
