"""Large objects on S3 move in concurrent parts: restores read ranges straight
into the arrays, saves upload parts while the archive is written; both stay
exact, checked and all-or-nothing."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import BUCKET, S3Server
from luigi_checkpoint.storage._s3 import incomplete_uploads
from luigi_checkpoint.storage.archive import dump, load
from luigi_checkpoint.storage.errors import ChecksumError, TransferOptionError
from luigi_checkpoint.storage.fs import atomic_write, resolve

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part


def _options(s3: S3Server, **transfer: int) -> dict:
    return {**s3.storage_options, "transfer_part_size": PART, "transfer_concurrency": 3, **transfer}


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "big": rng.standard_normal(3 * MiB).astype(np.float32),  # 12 MiB: three parts
        "fortran": np.asfortranarray(rng.integers(0, 1 << 40, (700, 600))),  # 3.2 MiB, one part
        "medium": [rng.standard_normal(300_000) for _ in range(3)],  # 2.3 MiB each
        "small": {"bias": np.arange(10, dtype=np.int16), "empty": np.zeros((0, 4))},
    }


class RangeLog:
    """The ``Range`` header of every GetObject request an s3fs filesystem sends."""

    def __init__(self, fs) -> None:
        fs.connect()
        fs.s3.meta.events.register("before-send.s3.GetObject", self._seen)
        self.ranges: list[tuple[int, int]] = []

    def _seen(self, request, **kwargs) -> None:
        if "Range" in request.headers:  # a whole object (cat_file) is asked without
            start, _, end = request.headers["Range"].decode().removeprefix("bytes=").partition("-")
            self.ranges.append((int(start), int(end) + 1))


def test_large_arrays_restore_exactly_from_ranges_no_larger_than_a_part(s3: S3Server) -> None:
    url, options = f"s3://{BUCKET}/parts.zip", _options(s3)
    state = _state()
    dump(state, url, storage_options=options)
    log = RangeLog(resolve(url, options).fs)
    loaded = load(url, storage_options=options)
    for name in ("big", "fortran"):
        np.testing.assert_array_equal(loaded[name], state[name])
        assert loaded[name].flags.writeable and loaded[name].flags.aligned
    assert loaded["fortran"].flags.f_contiguous
    for got, want in zip(loaded["medium"], state["medium"]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded["small"]["bias"], state["small"]["bias"])
    assert loaded["small"]["empty"].shape == (0, 4)
    big = sorted(r for r in log.ranges if r[1] - r[0] > MiB)
    assert big and all(end - start <= PART for start, end in big)
    covered = sum(end - start for start, end in big)
    assert covered >= sum(a.nbytes for a in [state["big"], state["fortran"], *state["medium"]])


def test_a_damaged_byte_in_a_large_array_fails_its_crc(s3: S3Server) -> None:
    url, options = f"s3://{BUCKET}/damaged.zip", _options(s3)
    state = _state()
    manifest = dump(state, url, storage_options=options)
    fs = resolve(url, options).fs
    data = bytearray(fs.cat_file(f"{BUCKET}/damaged.zip"))
    entry = next(e for e in manifest["arrays"] if e["name"] == "big")
    data[entry["offset"] + 9 * MiB] ^= 0x01  # in the big array's second part
    fs.pipe_file(f"{BUCKET}/damaged.zip", bytes(data))
    with pytest.raises(ChecksumError, match="'big'.*CRC-32 mismatch"):
        load(url, storage_options=options)


def test_an_upload_sends_parts_before_the_end_and_publishes_only_at_commit(s3: S3Server) -> None:
    target = resolve(f"s3://{BUCKET}/upload.bin", _options(s3, transfer_concurrency=2))
    payload = np.random.default_rng(3).bytes(3 * PART + 12345)
    with atomic_write(target) as f:
        for start in range(0, len(payload), MiB):
            f.write(payload[start : start + MiB])
        assert [path for path, _ in incomplete_uploads(target.fs, BUCKET)] == [f"{BUCKET}/upload.bin"]
        assert not target.fs.exists(target.path)
    assert target.fs.cat_file(target.path) == payload
    assert incomplete_uploads(target.fs, BUCKET) == []


def test_a_failed_write_aborts_the_parts_already_sent(s3: S3Server) -> None:
    target = resolve(f"s3://{BUCKET}/failed.bin", _options(s3))
    with pytest.raises(RuntimeError, match="training crashed"):
        with atomic_write(target) as f:
            f.write(bytes(2 * PART + 1))
            raise RuntimeError("training crashed")
    target.fs.invalidate_cache()
    assert not target.fs.exists(target.path)
    assert incomplete_uploads(target.fs, BUCKET) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("transfer_part_size", 1 << 20), ("transfer_part_size", "16MiB"), ("transfer_concurrency", 0)],
)
def test_bad_transfer_options_are_refused_naming_the_option(s3: S3Server, option: str, value: object) -> None:
    with pytest.raises(TransferOptionError, match=f"{option}={value!r}"):
        resolve(f"s3://{BUCKET}/x.zip", {**s3.storage_options, option: value})


def test_transfer_options_are_ours_and_not_passed_to_fsspec(s3: S3Server) -> None:
    location = resolve(f"s3://{BUCKET}/x.zip", _options(s3, transfer_concurrency=5))
    assert (location.transfer.concurrency, location.transfer.part_size) == (5, PART)
    assert not {"transfer_part_size", "transfer_concurrency"} & set(location.fs.storage_options)
    assert location.child("y").transfer == location.transfer
