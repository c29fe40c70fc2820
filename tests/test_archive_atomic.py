"""A failing ``dump`` publishes nothing: no file at ``dest``, a previous file
untouched byte for byte, no temp files, no pending S3 multipart uploads.

Failures are real: values that cannot be pickled, metadata that is not JSON,
and storage that refuses the bytes (a file-size limit on local disk, an S3
server rejecting the upload when it is completed: a fault proxy answers 500).
"""

from __future__ import annotations

import errno
import pickle
import resource
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from .conftest import BUCKET, S3Server, make_root
from .helpers_archive import assert_same
from luigi_checkpoint.storage.archive import dump, load
from luigi_checkpoint.storage.fs import Location, fresh_listing, resolve
from tests.soak.faultproxy import FaultPlan, FaultProxy

MiB = 1 << 20


class Boom(Exception):
    """Raised by :class:`Unpicklable` while it is pickled."""


class Unpicklable:
    def __reduce__(self) -> tuple[Any, ...]:
        raise Boom("cannot pickle me")


def _big_arrays() -> dict[str, np.ndarray]:
    """Three 4 MiB arrays: more than one S3 part, more than the local size limit."""
    return {f"W{i}": np.full(MiB // 2, i, dtype="<f8") for i in range(3)}


FAILURES: dict[str, tuple[Callable[[], tuple[Any, dict[str, Any]]], Any]] = {
    "lambda": (lambda: ({**_big_arrays(), "f": lambda: 0}, {}),
               (pickle.PicklingError, AttributeError)),
    "reduce_raises": (lambda: ({**_big_arrays(), "x": Unpicklable()}, {}), Boom),
    "metadata_not_json": (lambda: (_big_arrays(), {"metadata": {"when": object()}}),
                          (TypeError, ValueError)),
}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _assert_raised(exc: BaseException, expected: Any) -> None:
    assert any(isinstance(e, expected) for e in _chain(exc)), repr(exc)


def _listing(root: Any) -> list[str]:
    location = resolve(root.url, root.storage_options)
    return sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1]
                  for entry in fresh_listing(location))


def _assert_nothing_published(root: Any, dest: str, previous: bytes | None) -> None:
    location = resolve(dest, root.storage_options)
    fs, path = location.fs, location.path
    fs.invalidate_cache()
    if previous is None:
        assert not fs.exists(path)
        assert _listing(root) == []
    else:
        assert fs.cat_file(path) == previous
        assert _listing(root) == ["a.ckpt"]
    if root.kind == "s3":
        uploads = fs.call_s3("list_multipart_uploads", Bucket=BUCKET)
        assert not uploads.get("Uploads"), uploads["Uploads"]


def _previous(root: Any, dest: str, with_previous: bool) -> bytes | None:
    if not with_previous:
        return None
    dump({"old": np.arange(5)}, dest, storage_options=root.storage_options)
    location = resolve(dest, root.storage_options)
    fs, path = location.fs, location.path
    return fs.cat_file(path)


@pytest.mark.parametrize("with_previous", [False, True], ids=["fresh", "replacing"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_dump_publishes_nothing(root: Any, failure: str, with_previous: bool) -> None:
    make, expected = FAILURES[failure]
    state, options = make()
    dest = root.join("a.ckpt")
    previous = _previous(root, dest, with_previous)
    with pytest.raises(Exception) as info:
        dump(state, dest, storage_options=root.storage_options, **options)
    _assert_raised(info.value, expected)
    _assert_nothing_published(root, dest, previous)
    if previous is not None:
        assert_same(load(dest, storage_options=root.storage_options), {"old": np.arange(5)})


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Local disk refuses writes past ``limit`` bytes per file (EFBIG)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize("with_previous", [False, True], ids=["fresh", "replacing"])
@pytest.mark.parametrize("kind", ["local", "file"])
def test_local_disk_refusing_bytes_mid_write_publishes_nothing(
    request: pytest.FixtureRequest, tmp_path: Any, kind: str, with_previous: bool
) -> None:
    root = make_root(kind, tmp_path, request)
    dest = root.join("a.ckpt")
    previous = _previous(root, dest, with_previous)
    with _file_size_limit(6 * MiB), pytest.raises(OSError) as info:
        dump(_big_arrays(), dest)
    assert any(getattr(e, "errno", None) == errno.EFBIG for e in _chain(info.value)), info.value
    _assert_nothing_published(root, dest, previous)


@pytest.mark.parametrize("with_previous", [False, True], ids=["fresh", "replacing"])
def test_s3_refusing_the_upload_publishes_nothing(
    request: pytest.FixtureRequest, tmp_path: Any, with_previous: bool
) -> None:
    """Parts are uploaded (5 MiB blocks), then the server refuses to complete
    (a 500 for every ``CompleteMultipartUpload``, from a proxy in front of it)."""
    root = make_root("s3", tmp_path, request)
    dest = root.join("a.ckpt")
    previous = _previous(root, dest, with_previous)
    server: S3Server = request.getfixturevalue("s3")
    plan = FaultPlan({"http500": 1.0}, methods=frozenset({"POST"}), target="uploadId=")
    with FaultProxy(server.endpoint_url, plan) as proxy:
        refusing = {**server.options_via(proxy.url, retries={"max_attempts": 1}), "transfer_part_size": 5 * MiB}
        with pytest.raises(OSError):
            dump(_big_arrays(), dest, storage_options=refusing)
    assert proxy.injected["http500"] >= 1
    _assert_nothing_published(root, dest, previous)


def test_a_successful_dump_after_a_failed_one_publishes_the_new_state(root: Any) -> None:
    dest = root.join("a.ckpt")
    with pytest.raises(Exception):
        dump({"x": Unpicklable(), "W": np.arange(3)}, dest, storage_options=root.storage_options)
    state = {"W": np.arange(4.0)}
    dump(state, dest, storage_options=root.storage_options)
    assert_same(load(dest, storage_options=root.storage_options), state)
    assert _listing(root) == ["a.ckpt"]
