"""luigi_checkpoint.storage.fs: URLs resolve to filesystems; writes publish whole objects or nothing."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

from luigi_checkpoint.storage.errors import ObjectExistsError
from luigi_checkpoint.storage._s3 import abort_upload, incomplete_uploads
from luigi_checkpoint.storage.fs import (
    Location,
    atomic_write,
    TEMP_GRACE,
    fresh_listing,
    is_abandoned_temp,
    is_temp_name,
    resolve,
    url_of,
)

from .conftest import BUCKET, Root

BIG = 6 * 2**20  # past s3fs's 5 MiB minimum part: a multipart upload really starts


class Boom(Exception):
    pass


def names(root: Root, folder: str) -> list[str]:
    location = resolve(root.join(folder), root.storage_options)
    return sorted(entry["name"].rsplit("/", 1)[-1] for entry in fresh_listing(location))


def write(root: Root, rel: str, data: bytes, *, exclusive: bool = False) -> None:
    location = resolve(root.join(rel), root.storage_options)
    with atomic_write(location, exclusive=exclusive) as f:
        f.write(data)


def read(root: Root, rel: str) -> bytes:
    location = resolve(root.join(rel), root.storage_options)
    fs, path = location.fs, location.path
    return fs.cat_file(path)


def test_written_object_reads_back_whole(root: Root) -> None:
    write(root, "run/a.bin", b"abc" * 1000)
    assert read(root, "run/a.bin") == b"abc" * 1000
    assert names(root, "run") == ["a.bin"]


def test_big_object_written_in_parts_reads_back_whole(root: Root) -> None:
    data = os.urandom(BIG) + b"tail"
    write(root, "run/big.bin", data)
    assert read(root, "run/big.bin") == data


def test_replacing_write_swaps_content(root: Root) -> None:
    write(root, "run/a.bin", b"old")
    write(root, "run/a.bin", b"new")
    assert read(root, "run/a.bin") == b"new"


def fail_writing(root: Root, rel: str, size: int) -> None:
    """Write ``size`` bytes to ``rel``, flush them, then raise inside the block."""
    location = resolve(root.join(rel), root.storage_options)
    with pytest.raises(Boom):
        with atomic_write(location) as f:
            f.write(b"x" * size)
            f.flush()
            raise Boom


@pytest.mark.parametrize("size", [10, BIG])
def test_exception_inside_write_publishes_nothing(root: Root, size: int) -> None:
    fail_writing(root, "run/a.bin", size)
    assert not root.fs().exists(resolve(root.join("run/a.bin"), root.storage_options).path)
    assert names(root, "run") == []


@pytest.mark.parametrize("size", [10, BIG])
def test_exception_inside_write_keeps_previous_object(root: Root, size: int) -> None:
    write(root, "run/a.bin", b"previous")
    fail_writing(root, "run/a.bin", size)
    assert read(root, "run/a.bin") == b"previous"
    assert names(root, "run") == ["a.bin"]


def test_exclusive_write_refuses_existing_object(root: Root) -> None:
    write(root, "run/a.bin", b"first")
    with pytest.raises(ObjectExistsError) as err:
        write(root, "run/a.bin", b"second", exclusive=True)
    assert isinstance(err.value, FileExistsError)
    assert "a.bin" in str(err.value)
    assert read(root, "run/a.bin") == b"first"
    assert names(root, "run") == ["a.bin"]


def test_exclusive_write_creates_missing_object(root: Root) -> None:
    write(root, "run/a.bin", b"first", exclusive=True)
    assert read(root, "run/a.bin") == b"first"


def test_object_appears_only_when_write_completes(root: Root) -> None:
    location = resolve(root.join("run/a.bin"), root.storage_options)
    with atomic_write(location) as f:
        f.write(b"x" * BIG)
        f.flush()
        visible = [n for n in names(root, "run") if not is_temp_name(n)]
        assert visible == []
    assert names(root, "run") == ["a.bin"]


def test_exclusive_race_second_commit_loses_on_s3(s3) -> None:
    """Two uploads of one key opened before either commits: If-None-Match decides."""
    location = resolve(f"s3://{BUCKET}/run/a.bin", s3.storage_options)
    fs, path = location.fs, location.path
    with pytest.raises(ObjectExistsError):
        with atomic_write(location, exclusive=True) as first:
            first.write(b"first" * 100)
            with atomic_write(location, exclusive=True) as second:
                second.write(b"second" * 100)
    assert fs.cat_file(path) == b"second" * 100
    assert not fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads")


def test_failed_s3_upload_leaves_no_multipart_upload(s3) -> None:
    location = resolve(f"s3://{BUCKET}/run/a.bin", s3.storage_options)
    fs, path = location.fs, location.path
    with pytest.raises(Boom):
        with atomic_write(location) as f:
            f.write(b"x" * (12 * 2**20))
            f.flush()
            raise Boom
    assert not fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads")
    assert not fs.exists(path)


def test_incomplete_uploads_lists_those_under_the_prefix_only(s3) -> None:
    location = resolve(f"s3://{BUCKET}/", s3.storage_options)
    fs = location.fs
    created = {
        (f"{BUCKET}/run/{i}.bin", fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key=f"run/{i}.bin")["UploadId"])
        for i in range(3)
    }
    fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key="runs/other.bin")
    assert set(incomplete_uploads(fs, f"{BUCKET}/run/")) == created


def test_abort_upload_frees_it_and_tolerates_one_already_gone(s3) -> None:
    location = resolve(f"s3://{BUCKET}/run/a.bin", s3.storage_options)
    fs, path = location.fs, location.path
    upload_id = fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key="run/a.bin")["UploadId"]
    abort_upload(fs, path, upload_id)
    assert incomplete_uploads(fs, f"{BUCKET}/run/") == []
    abort_upload(fs, path, upload_id)  # a concurrent prune got there first


def test_stores_without_uploads_list_none(tmp_path) -> None:
    location = resolve(str(tmp_path))
    fs, path = location.fs, location.path
    assert incomplete_uploads(fs, path) == []


_publishing: list[tuple[str, bool]] = []
_watched: list[str] = []  # the folder whose publishing moves the audit hook checks


def _check_publish(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: when a temp file of the watched folder is published, is it
    still locked, i.e. would a concurrent sweep of abandoned temp files spare it?"""
    if event not in ("os.link", "os.rename") or not _watched:
        return
    temp = os.fsdecode(args[0])
    if os.path.dirname(temp) == _watched[0] and is_temp_name(os.path.basename(temp)):
        location = resolve(temp)
        fs = location.fs
        entry = {**fs.info(temp), "mtime": time.time() - 10 * TEMP_GRACE}  # old enough to be swept
        _publishing.append((event, is_abandoned_temp(fs, entry)))


sys.addaudithook(_check_publish)


@pytest.mark.parametrize("exclusive", [True, False])
def test_local_temp_file_stays_locked_until_published(tmp_path, exclusive: bool) -> None:
    """A writer slower than the grace period must not lose its temp file to a
    sweep in the instant between finishing the data and publishing the name."""
    location = resolve(str(tmp_path / "a.bin"))
    _watched[:] = [str(tmp_path)]
    try:
        with atomic_write(location, exclusive=exclusive) as f:
            f.write(b"data")
    finally:
        _watched.clear()
    assert _publishing == [("os.link" if exclusive else "os.rename", False)]
    _publishing.clear()
    assert os.listdir(tmp_path) == ["a.bin"]


def test_local_temp_file_is_a_dot_partial_sibling(tmp_path) -> None:
    location = resolve(str(tmp_path / "a.bin"))
    with atomic_write(location) as f:
        f.write(b"x")
        (temp,) = os.listdir(tmp_path)
        assert is_temp_name(temp) and temp.startswith(".a.bin.")
    assert os.listdir(tmp_path) == ["a.bin"]


def test_listing_sees_objects_written_by_another_client(s3) -> None:
    location = resolve(f"s3://{BUCKET}/run", s3.storage_options)
    fs, folder = location.fs, location.path
    fs.pipe_file(f"{folder}/one", b"1")
    assert [e["name"] for e in fresh_listing(location)] == [f"{folder}/one"]
    location = resolve(f"s3://{BUCKET}/run", {**s3.storage_options, "skip_instance_cache": True})
    other, _ = location.fs, location.path
    other.pipe_file(f"{folder}/two", b"2")
    assert sorted(e["name"] for e in fresh_listing(location)) == [
        f"{folder}/one",
        f"{folder}/two",
    ]


def test_missing_folder_lists_empty(root: Root) -> None:
    location = resolve(root.join("nothing-here"), root.storage_options)
    assert fresh_listing(location) == []


def test_url_of_keeps_protocol_for_remote_and_plain_path_for_local(tmp_path, s3) -> None:
    location = resolve(str(tmp_path / "x"))
    fs, path = location.fs, location.path
    assert url_of(fs, path) == str(tmp_path / "x")
    location = resolve(f"s3://{BUCKET}/x", s3.storage_options)
    fs, path = location.fs, location.path
    assert url_of(fs, path) == f"s3://{BUCKET}/x"
