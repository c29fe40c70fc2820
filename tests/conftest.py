"""Shared fixtures: a real S3 protocol server on loopback and a storage root
parametrized over local disk, ``file://``, ``memory://`` and ``s3://``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pytest
import requests

from storage.fs import resolve

BUCKET = "ckpt-test"


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on 127.0.0.1 speaking the real S3 protocol over HTTP."""

    endpoint_url: str

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto-based clients at this server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def reset(self) -> None:
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
        fs, _ = resolve(f"s3://{BUCKET}", self.storage_options)
        fs.call_s3("create_bucket", Bucket=BUCKET)
        fs.invalidate_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    """The S3 server, emptied, with bucket ``ckpt-test`` and fresh fsspec caches."""
    fsspec.AbstractFileSystem.clear_instance_cache()
    s3_server.reset()
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
        return resolve(self.url, self.storage_options)[0]


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
