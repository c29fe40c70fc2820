"""What every campaign runs against: a work folder, an S3 server on loopback
(the one ``LUIGI_CHECKPOINT_S3`` chooses, see :mod:`tests.s3server`), and a
fork server of worker processes with the library already imported."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from ..s3server import S3Server

BUCKET = "soak"
PRELOAD = ["numpy", "s3fs", "luigi", "luigi_checkpoint.storage.archive", "luigi_checkpoint.storage.checkpoints", "luigi_checkpoint.storage.snapshot",
           "luigi_checkpoint.pipeline.mlp", "tests.soak.states"]


@dataclass(frozen=True)
class SoakEnv:
    """A scratch folder and an S3 server (bucket ``soak`` exists)."""

    workdir: Path
    server: S3Server

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def s3_options(self, endpoint_url: str | None = None, **config: Any) -> dict[str, Any]:
        """fsspec options for the server (or for a proxy in front of it)."""
        return self.server.options_via(endpoint_url or self.endpoint_url, **config)

    def folder(self, name: str) -> Path:
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def s3_url(self, name: str) -> str:
        return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:6]}"

    def s3_client(self) -> Any:
        from luigi_checkpoint.storage.fs import resolve

        location = resolve(f"s3://{BUCKET}", self.s3_options())

        fs, _ = location.fs, location.path
        return fs

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        """Incomplete multipart uploads under ``s3://soak/<prefix>``."""
        answer = self.s3_client().call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix=prefix)
        return list(answer.get("Uploads", []))

    def abort_uploads(self, prefix: str) -> int:
        """Abort incomplete uploads (what a bucket lifecycle rule does); their count."""
        uploads = self.multipart_uploads(prefix)
        for upload in uploads:
            try:
                self.s3_client().call_s3(
                    "abort_multipart_upload", Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            except FileNotFoundError:  # completed or aborted since it was listed
                pass
        return len(uploads)


def create_bucket(env: SoakEnv) -> None:
    """Create the bucket ``soak``, or empty it."""
    env.server.empty_bucket(BUCKET)


_context: BaseContext | None = None


def workers() -> BaseContext:
    """A forkserver context whose server has the library imported: a worker
    starts in milliseconds, so hundreds of kill trials stay cheap."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _quiet(target: Callable[..., Any], *args: Any) -> None:
    """Run ``target`` with warnings of the library not logged (they are expected here)."""
    logging.basicConfig(level=logging.ERROR)
    target(*args)


def start_worker(target: Callable[..., Any], *args: Any) -> multiprocessing.Process:
    """Start ``target(*args)`` in a worker forked from the fork server."""
    process = workers().Process(target=_quiet, args=(target, *args), daemon=True)
    process.start()
    return process


def kill(process: multiprocessing.Process) -> None:
    """SIGKILL a worker and reap it."""
    if process.pid is not None and process.exitcode is None:
        os.kill(process.pid, signal.SIGKILL)
    process.join()
