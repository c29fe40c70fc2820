"""Minimal reproductions of what the reliability campaigns (``make soak``) found.

Each test states the behaviour the product promises. While a finding is open
it is marked ``xfail(strict=True, reason="finding: ...")``: the day the fix
lands the test passes, strict xfail turns that into a failure, and whoever
fixed it removes the mark (and the finding from ``tests/test_soak_quick.py``).
"""

from __future__ import annotations

import io
import os
import resource
import signal
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage import archive
from luigi_checkpoint.storage.checkpoints import CheckpointStore
from luigi_checkpoint.storage.errors import ArchiveError, CheckpointError, StorageError, UntrustedTypeError
from luigi_checkpoint.storage.snapshot import load_snapshot, save_snapshot
from tests.conftest import BUCKET, S3Server
from tests.soak.faultproxy import FaultPlan, FaultProxy

SMALL = {"w": np.arange(1000.0), "step": 1}


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Files written by this process may not grow past ``limit`` bytes (EFBIG, as on a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_disk_full_save_raises_a_storage_error_naming_the_archive(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "run"), keep_last=None)
    store.save(1, SMALL)
    with file_size_limit(100_000), pytest.raises(StorageError, match="step-000000000002.zip"):
        store.save(2, {"w": np.arange(50_000.0)})
    assert sorted(os.listdir(tmp_path / "run")) == ["step-000000000001.zip"]
    assert store.restore()[0] == 1


def _through(proxy: FaultProxy, s3: S3Server, **extra: Any) -> dict[str, Any]:
    """Storage options via the proxy, failing fast: one botocore attempt, short timeouts."""
    options = {**s3.storage_options, **extra}
    options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.url}
    options["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 1}
    return options


@pytest.mark.parametrize("fault", ["reset", "http500", "cut"])
def test_s3_failures_during_save_and_restore_raise_checkpoint_errors(s3: S3Server, fault: str) -> None:
    root = f"s3://{BUCKET}/faulty"
    CheckpointStore(root, storage_options=s3.storage_options).save(1, SMALL)
    with FaultProxy(s3.endpoint_url, FaultPlan({fault: 1.0})) as proxy:
        store = CheckpointStore(root, storage_options=_through(proxy, s3))
        with pytest.raises(CheckpointError):
            store.save(2, SMALL)
        with pytest.raises(CheckpointError):
            store.restore()


def test_s3_read_failures_after_the_listing_raise_checkpoint_errors(s3: S3Server) -> None:
    root = f"s3://{BUCKET}/reads"
    CheckpointStore(root, storage_options=s3.storage_options).save(1, SMALL)
    # The listing goes through; every read of the archive after it fails.
    with FaultProxy(s3.endpoint_url, FaultPlan({"http500": 1.0}, skip=1)) as proxy:
        with pytest.raises(CheckpointError):
            CheckpointStore(root, storage_options=_through(proxy, s3)).restore()
        with pytest.raises(CheckpointError):
            archive.read_manifest(f"{root}/step-000000000001.zip", storage_options=_through(proxy, s3))


def test_restore_never_falls_back_to_an_older_step_on_a_read_error(s3: S3Server) -> None:
    root = f"s3://{BUCKET}/stale"
    big = {"w": np.arange(400_000.0), "step": 2}  # 3.2 MB: arrays are read by separate range requests
    direct = CheckpointStore(root, keep_last=None, storage_options=s3.storage_options)
    direct.save(1, SMALL)
    direct.save(2, big)
    with FaultProxy(s3.endpoint_url) as proxy:
        CheckpointStore(root, storage_options=_through(proxy, s3)).restore()
        # The last request of a restore reads the array data: cut it often
        # enough to exhaust the retries, then let everything through.
        proxy.set_plan(FaultPlan({"cut": 1.0}, skip=proxy.requests - 1, max_faults=6))
        store = CheckpointStore(root, storage_options=_through(proxy, s3, skip_instance_cache=True))
        try:
            outcome: object = store.restore()[0]
        except Exception as exc:  # noqa: BLE001 - an error (raw or not) is not this finding
            outcome = exc
    assert outcome != 1, "restore returned step 1 although step 2 is committed and whole"


def test_s3_read_errors_are_storage_errors_naming_the_archive_never_damage(s3: S3Server) -> None:
    root = f"s3://{BUCKET}/read-errors"
    direct = CheckpointStore(root, keep_last=None, storage_options=s3.storage_options)
    direct.save(1, SMALL)
    direct.save(2, SMALL)
    with FaultProxy(s3.endpoint_url) as proxy:
        store = CheckpointStore(root, storage_options=_through(proxy, s3))
        for call in (store.latest_step, store.restore):
            proxy.set_plan(FaultPlan({"http500": 1.0}, skip=1))  # the listing goes through
            with pytest.raises(StorageError, match=r"read-errors/step-000000000002\.zip: "):
                call()


def test_failed_s3_save_leaves_no_incomplete_multipart_upload(s3: S3Server) -> None:
    root = f"s3://{BUCKET}/uploads"
    # Every POST (create and complete of the multipart upload) reaches the server,
    # but its answer is lost: the client retries and finally gives up.
    with FaultProxy(s3.endpoint_url, FaultPlan({"reset_after": 1.0}, methods=frozenset({"POST"}))) as proxy:
        options = _through(proxy, s3, transfer_part_size=5 << 20)
        options["config_kwargs"]["retries"] = {"max_attempts": 3}
        store = CheckpointStore(root, storage_options=options)
        with pytest.raises(Exception):  # noqa: B017 - which error is the other finding
            store.save(1, {"w": np.arange(800_000.0)})  # 6.4 MB: a multipart upload of 5 MB parts
    fs = CheckpointStore(root, storage_options=s3.storage_options).root.fs
    uploads = fs.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix="uploads/").get("Uploads", [])
    assert uploads == []


def test_an_upload_landing_after_a_failed_save_is_aborted_once_that_step_is_saved(s3: S3Server) -> None:
    store = CheckpointStore(f"s3://{BUCKET}/late", keep_last=None, storage_options=s3.storage_options)
    store.save(1, SMALL)
    fs = store.root.fs

    def land(key: str) -> None:
        """What a create request delayed past its save's failure does when it lands: an upload with a part."""
        upload = fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key=key)["UploadId"]
        fs.call_s3("upload_part", Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)

    def uploads() -> list[str]:
        return sorted(u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads", []))

    land("late/step-000000000002.zip")  # the save of step 2 failed, twice
    land("late/step-000000000002.zip")
    land("late/step-000000000003.zip")  # maybe a live save of another writer
    land("late/notes.bin")  # not an archive of the run
    store.save(2, SMALL)  # the retried task saves step 2 again
    assert uploads() == ["late/notes.bin", "late/step-000000000003.zip"]
    land("late/step-000000000001.zip")
    assert store.prune() == []  # what `ckpt prune` runs
    assert uploads() == ["late/notes.bin", "late/step-000000000003.zip"]
    assert store.steps() == [1, 2]


@pytest.mark.parametrize("pruned_since", [False, True])
def test_an_s3_upload_aborted_because_its_step_was_saved_meanwhile_raises_step_exists(
    s3: S3Server, pruned_since: bool
) -> None:
    from luigi_checkpoint.storage._s3 import abort_upload, incomplete_uploads
    from luigi_checkpoint.storage.errors import ObjectExistsError
    from luigi_checkpoint.storage.fs import Location, atomic_write, resolve

    options = {**s3.storage_options, "transfer_part_size": 5 << 20, "config_kwargs": {"retries": {"max_attempts": 1}}}
    location = resolve(f"s3://{BUCKET}/behind/step-000000000001.zip", options)
    fs, path = location.fs, location.path
    data = np.arange(800_000.0).tobytes()  # 6.4 MB: a multipart upload of 5 MB parts
    with pytest.raises(ObjectExistsError, match="another writer wrote it while this upload ran"):
        with atomic_write(location, exclusive=True) as f:
            f.write(data)  # the first part is uploaded ...
            with atomic_write(location, exclusive=True) as other:
                other.write(b"another writer's step 1")
            for upload in incomplete_uploads(fs, path):  # ... a prune aborts the rest ...
                abort_upload(fs, *upload)
            if pruned_since:  # ... and maybe the step is pruned too before this writer notices
                fs.rm_file(path)
            f.write(data)
    assert fs.exists(path) is not pruned_since
    assert incomplete_uploads(fs, path) == []


def test_a_failed_s3_save_does_not_abort_another_writers_upload(s3: S3Server) -> None:
    from luigi_checkpoint.storage.fs import Location, atomic_write, resolve

    options = {**s3.storage_options, "transfer_part_size": 5 << 20}
    location = resolve(f"s3://{BUCKET}/two-writers/step-000000000001.zip", options)
    fs, path = location.fs, location.path
    data = np.arange(800_000.0).tobytes()  # 6.4 MB: multipart uploads of 5 MB parts
    writer_b = atomic_write(location, exclusive=True)
    b = writer_b.__enter__()  # B starts first ...
    writer_a = atomic_write(location, exclusive=True)
    a = writer_a.__enter__()  # ... A starts its upload ...
    a.write(data)
    b.write(data)
    failure = RuntimeError("writer B fails")
    assert not writer_b.__exit__(RuntimeError, failure, None)  # ... B fails while A is uploading ...
    a.write(b"end")
    writer_a.__exit__(None, None, None)  # ... and A, which nothing stopped, completes
    fs.invalidate_cache()
    assert fs.cat_file(path) == data + b"end"


def _replace_member(data: bytes, name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, content if info.filename == name else src.read(info))
    return out.getvalue()


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_archive_manifest_is_an_archive_error() -> None:
    out = io.BytesIO()
    archive.dump(SMALL, out)
    hostile = _replace_member(out.getvalue(), "manifest.json", DEEP_JSON)
    with pytest.raises(ArchiveError):
        archive.read_manifest(io.BytesIO(hostile))


def test_deeply_nested_snapshot_manifest_is_an_archive_error(tmp_path: Path) -> None:
    save_snapshot({"w": np.arange(3.0)}, str(tmp_path / "s.zip"))
    hostile = _replace_member((tmp_path / "s.zip").read_bytes(), "manifest.json", DEEP_JSON)
    with pytest.raises(ArchiveError):
        load_snapshot(io.BytesIO(hostile))


def _pickled_archive(pickle_bytes: bytes) -> bytes:
    out = io.BytesIO()
    archive.dump({}, out)
    return _replace_member(out.getvalue(), "pkl", pickle_bytes)


GIGABYTE = b"\x8a\x08" + (10**9).to_bytes(8, "little")  # LONG1 10**9


@pytest.mark.parametrize(
    "stream",
    [
        b"\x80\x02c__builtin__\nbytes\n" + GIGABYTE + b"\x85R.",
        b"\x80\x02c__builtin__\nbytearray\n" + GIGABYTE + b"\x85R.",
        b"\x80\x02cnumpy\nndarray\n" + GIGABYTE + b"\x85\x81.",
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + GIGABYTE + b"\x85C\x01b\x87R.",
    ],
    ids=["bytes", "bytearray", "ndarray.__new__", "_reconstruct"],
)
def test_a_60_byte_pickle_cannot_allocate_a_gigabyte(stream: bytes) -> None:
    data = _pickled_archive(stream)
    tracemalloc.start()
    try:
        with pytest.raises((ArchiveError, UntrustedTypeError)):
            archive.load(io.BytesIO(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_next_save_removes_the_temp_file_of_a_killed_writer(tmp_path: Path) -> None:
    root = tmp_path / "run"
    store = CheckpointStore(str(root))
    store.save(1, SMALL)
    pid = os.fork()
    if pid == 0:  # the writer: killed by its own SIGKILL in the middle of writing step 2
        try:
            with open(os.devnull, "wb"):
                from luigi_checkpoint.storage.fs import atomic_write, resolve

                location = resolve(str(root / "step-000000000002.zip"))
                fs = location.fs
                with atomic_write(location, exclusive=True) as f:
                    f.write(b"half an archive")
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    (temp,) = [root / name for name in os.listdir(root) if name.endswith(".partial")]
    os.utime(temp, (temp.stat().st_mtime - 60,) * 2)  # the crash was a minute ago
    store.save(3, SMALL)
    assert not any(name.endswith(".partial") for name in os.listdir(root))


def test_restore_lists_again_before_saying_there_is_no_good_checkpoint(tmp_path: Path) -> None:
    """A listing of a folder that other processes change can be out of date by
    the time its archives are read (soak, local concurrency: 1 restore in about
    50,000 operations found "no good checkpoint" in a folder that always held 3)."""
    import logging

    root = tmp_path / "run"
    root.mkdir()
    (root / "step-000000000002.zip").write_bytes(b"damaged")  # the only step in the first listing
    writer = CheckpointStore(str(root), keep_last=None)

    class SaveWhenSkipped(logging.Handler):  # another process saves while the reader skips step 2
        def emit(self, record: logging.LogRecord) -> None:
            if "skipping damaged checkpoint" in record.getMessage() and not writer.steps()[1:]:
                writer.save(3, SMALL)

    handler = SaveWhenSkipped()
    logger = logging.getLogger("luigi_checkpoint.storage.checkpoints")
    logger.addHandler(handler)
    try:
        step, state = CheckpointStore(str(root)).restore()
    finally:
        logger.removeHandler(handler)
    assert step == 3 and np.array_equal(state["w"], SMALL["w"])
    damaged = tmp_path / "damaged-only"
    damaged.mkdir()
    (damaged / "step-000000000001.zip").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="no good checkpoint to restore"):
        CheckpointStore(str(damaged)).restore()  # two listings agree: nothing passes
