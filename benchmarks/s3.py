"""The S3 cases, on the S3 server that ``LUIGI_CHECKPOINT_S3`` chooses: moto
on 127.0.0.1 in a subprocess by default, SeaweedFS, or an endpoint URL (see
:mod:`tests.s3server`).

Requests are counted for real: a botocore ``before-send`` hook on the s3fs
client sees every HTTP request (retries included) just before it is sent.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.s3server import S3Server, chosen
from tests.s3server import s3_server as s3_server_of_choice

BUCKET = "bench"
ARCHIVE_READS = ("GetObject", "HeadObject")

# The moto server also answers one command on stdin, a JSON list [bucket,
# source key, key template, count]: it copies the object ``source`` (uploaded
# over HTTP) under ``count`` names inside moto itself, so that setting up a
# folder of 10,000 archives takes a second instead of 10,000 requests. Other
# servers get concurrent server-side copies (CopyObject).
_MOTO = """
import json
import logging
import sys
from moto.server import ThreadedMotoServer
from moto.s3.models import s3_backends
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
for line in sys.stdin:
    bucket, source, template, count = json.loads(line)
    partition, account = s3_backends.bucket_accounts[bucket]
    backend = s3_backends[account][partition]
    value = backend.get_object(bucket, source).value
    for i in range(count):
        backend.put_object(bucket, template.format(i), value)
    print("copied", flush=True)
"""


@dataclass(frozen=True)
class Server:
    """A running S3 server: fsspec ``storage_options`` and many copies of one object."""

    s3: S3Server
    moto: subprocess.Popen[str] | None = None

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.s3.storage_options

    def copy_many(self, bucket: str, source: str, template: str, count: int) -> None:
        """Copy object ``source`` to ``template.format(i)`` for i < count."""
        if self.moto is None:
            fs = self.s3.fs()
            fs.copy([f"{bucket}/{source}"] * count, [f"{bucket}/{template.format(i)}" for i in range(count)])
            return
        assert self.moto.stdin is not None and self.moto.stdout is not None
        self.moto.stdin.write(json.dumps([bucket, source, template, count]) + "\n")
        self.moto.stdin.flush()
        if self.moto.stdout.readline().strip() != "copied":
            raise RuntimeError("moto server failed to copy objects")


@contextmanager
def s3_server(choice: str | None = None) -> Iterator[Server]:
    """The S3 server of ``choice`` (default: ``LUIGI_CHECKPOINT_S3``, see
    :mod:`tests.s3server`); moto runs in a subprocess of its own."""
    if (choice or chosen()) != "moto":
        with s3_server_of_choice(choice) as server:
            yield Server(server)
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        if not endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"moto server did not start (got {endpoint!r})")
        yield Server(S3Server(endpoint, "moto", "bench", "bench"), proc)
    finally:
        proc.terminate()
        proc.wait()


class RequestCounter:
    """Counts the HTTP requests an s3fs filesystem sends, per S3 operation."""

    def __init__(self, fs: Any) -> None:
        fs.connect()
        fs.s3.meta.events.register("before-send.s3", self._count)
        self.by_operation: Counter[str] = Counter()

    def _count(self, event_name: str, **kwargs: Any) -> None:
        self.by_operation[event_name.rsplit(".", 1)[-1]] += 1

    def reset(self) -> None:
        self.by_operation.clear()

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    @property
    def archive_reads(self) -> int:
        return sum(self.by_operation[op] for op in ARCHIVE_READS)


def _timed(repeats: int, func: Any) -> list[float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        func(i)
        times.append(time.perf_counter() - start)
    return times


TRANSFERS = (
    ("s3fs put_file", None),
    ("ours save", "s3fs put_file"),
    ("s3fs cat_file", None),
    ("ours restore", "s3fs cat_file"),
)


def transfer_cases(
    options: dict[str, Any],
    state: dict[str, np.ndarray],
    raw_path: str,
    repeats: int,
    *,
    ours: bool,
) -> dict[str, list[float]]:
    """Our save/restore through CheckpointStore vs s3fs put_file/cat_file of the
    same bytes, taken in turns (a load on the machine touches both alike)."""
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    peer = f"{BUCKET}/peer/state.bin"
    cases = {
        "s3fs put_file": lambda i: fs.put_file(raw_path, peer),
        "s3fs cat_file": lambda i: fs.cat_file(peer),
    }
    if ours:
        from luigi_checkpoint.storage.checkpoints import CheckpointStore

        url = f"s3://{BUCKET}/transfer"
        store = CheckpointStore(url, storage_options=options, keep_last=repeats)
        cases = {
            "s3fs put_file": cases["s3fs put_file"],
            "ours save": lambda i: store.save(i, state),
            "s3fs cat_file": cases["s3fs cat_file"],
            "ours restore": lambda i: store.restore(i),
        }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats):
        for name, case in cases.items():
            times[name] += _timed(1, lambda _: case(i))
    if ours:
        _check_restored(store, state)
    return times


def _check_restored(store: Any, state: dict[str, np.ndarray]) -> None:
    step, restored = store.restore()
    for name, array in state.items():
        if not np.array_equal(restored[name], array):
            raise AssertionError(f"S3 restore of step {step} changed array {name}")


def latest_step_case(server: Server, archives: int, repeats: int) -> dict[str, Any]:
    """``latest_step()`` over ``archives`` tiny archives vs one plain listing."""
    from luigi_checkpoint.storage.archive import dump
    from luigi_checkpoint.storage.checkpoints import CheckpointStore
    from luigi_checkpoint.storage.fs import Location, fresh_listing, resolve

    options = server.storage_options
    location = resolve(f"s3://{BUCKET}", options)
    fs = location.fs
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    folder = f"{BUCKET}/many"
    buffer = io.BytesIO()
    dump({"w": np.arange(4, dtype=np.float32)}, buffer)
    fs.pipe_file(f"{BUCKET}/tiny.zip", buffer.getvalue())
    server.copy_many(BUCKET, "tiny.zip", "many/step-{:012d}.zip", archives)
    fresh_listing(Location(fs, folder))  # warm-up: the first listing of a new folder is slower in moto
    counter = RequestCounter(fs)
    results: dict[str, Any] = {}
    for name, func in (
        ("one plain listing", lambda i: fresh_listing(Location(fs, folder))),
        ("ours latest_step()", lambda i: _latest(CheckpointStore, folder, options, archives)),
    ):
        counter.reset()
        times = _timed(repeats, func)
        results[name] = {
            "times": times,
            "requests": counter.total / repeats,
            "archive_reads": counter.archive_reads / repeats,
            "by_operation": {k: v / repeats for k, v in counter.by_operation.items()},
        }
    if results["ours latest_step()"]["requests"] == 0:
        raise RuntimeError("the request counter saw none of CheckpointStore's requests")
    return results


def _latest(store_type: Any, folder: str, options: dict[str, Any], archives: int) -> None:
    step = store_type(f"s3://{folder}", storage_options=options).latest_step()
    if step != archives - 1:
        raise AssertionError(f"latest_step() gave {step}, expected {archives - 1}")
