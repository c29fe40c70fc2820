"""Large objects on S3 move in concurrent parts: restores read ranges straight
into the arrays, saves upload parts while the archive is written; both stay
exact, checked and all-or-nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import BUCKET, S3Server
from luigi_checkpoint.storage._s3 import incomplete_uploads
from luigi_checkpoint.storage.archive import dump, load
from luigi_checkpoint.storage._transfer import BufferedRanges, Transfer, read_into
from luigi_checkpoint.storage.errors import ChecksumError, TransferOptionError
from luigi_checkpoint.storage.fs import atomic_write, resolve
from tests.soak.faultproxy import FaultPlan, FaultProxy

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


def test_large_arrays_restore_from_s3_exactly_in_as_many_ranges_as_the_concurrency(s3: S3Server) -> None:
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
    # The five large members follow each other in the archive: their 22 MiB are
    # streamed in three equal ranges (concurrency 3), not in 5 MiB parts.
    big = sorted(r for r in log.ranges if r[1] - r[0] > MiB)
    assert len(big) == 3
    assert all(start == end for (_, end), (start, _) in zip(big, big[1:]))
    assert max(end - start for start, end in big) - min(end - start for start, end in big) <= 2
    covered = sum(end - start for start, end in big)
    assert covered >= sum(a.nbytes for a in [state["big"], state["fortran"], *state["medium"]])


def test_an_s3_range_cut_short_resumes_from_the_byte_reached(s3: S3Server) -> None:
    url = f"s3://{BUCKET}/cut.zip"
    state = _state()
    dump(state, url, storage_options=s3.storage_options)
    with FaultProxy(s3.endpoint_url, FaultPlan({"cut": 1.0}, seed=3, skip=2, max_faults=2)) as proxy:
        options = _options(s3, transfer_concurrency=1)
        options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.url}
        log = RangeLog(resolve(url, options).fs)
        loaded = load(url, storage_options=options)
    np.testing.assert_array_equal(loaded["big"], state["big"])
    for got, want in zip(loaded["medium"], state["medium"]):
        np.testing.assert_array_equal(got, want)
    first, *again = [r for r in log.ranges if r[1] - r[0] > MiB]
    assert len(again) == 2  # each cut asked for the rest only, from where the bytes stopped
    assert all(first[0] < start and end == first[1] for start, end in again)
    assert again[0][0] < again[1][0]


def test_a_damaged_byte_in_a_large_array_on_s3_fails_its_crc(s3: S3Server) -> None:
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


def test_an_s3_upload_sends_parts_before_the_end_and_publishes_only_at_commit(s3: S3Server) -> None:
    target = resolve(f"s3://{BUCKET}/upload.bin", _options(s3, transfer_concurrency=2))
    payload = np.random.default_rng(3).bytes(3 * PART + 12345)
    with atomic_write(target) as f:
        for start in range(0, len(payload), MiB):
            f.write(payload[start : start + MiB])
        assert [path for path, _ in incomplete_uploads(target.fs, BUCKET)] == [f"{BUCKET}/upload.bin"]
        assert not target.fs.exists(target.path)
    assert target.fs.cat_file(target.path) == payload
    assert incomplete_uploads(target.fs, BUCKET) == []


def test_a_failed_s3_write_aborts_the_parts_already_sent(s3: S3Server) -> None:
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



class _Object:
    """A fake remote object's range reads (a function of the plan, not of S3):
    every request is logged with its size."""

    def __init__(self, data: bytes, *, streams: bool) -> None:
        self.data, self.streams, self.sizes = data, streams, []
        self.buffered = BufferedRanges(self._fetch)

    def _fetch(self, start: int, end: int) -> bytes:
        self.sizes.append(end - start)
        return self.data[start:end]

    def __call__(self, offset: int, views) -> None:
        self.buffered(offset, views)


@settings(max_examples=200, deadline=None)
@given(
    layout=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40)), min_size=1, max_size=12),
    concurrency=st.integers(1, 6),
    part=st.integers(1, 30),
    streams=st.booleans(),
    data=st.data(),
)
def test_a_read_fills_every_segment_exactly_in_the_fewest_bounded_requests(
    layout: list[tuple[int, int]], concurrency: int, part: int, streams: bool, data: st.DataObject
) -> None:
    """Segments (a gap before each, then its size), given in any order: each is
    filled with its own bytes, ``on_part`` sees each segment's bytes in order,
    no request is larger than its bound (a part; for a streaming reader the
    larger of a part and the total over the concurrency) and each run of
    touching segments takes the fewest requests of that bound."""
    offsets, position = [], 0
    for gap, size in layout:
        offsets.append(position + gap)
        position += gap + size
    remote = _Object(np.random.default_rng(len(layout)).bytes(position), streams=streams)
    order = data.draw(st.permutations(range(len(layout))))
    segments = [(offsets[i], memoryview(bytearray(layout[i][1]))) for i in order]
    transfer = Transfer.__new__(Transfer)  # any part size: S3's 5 MiB minimum is not this rule's business
    object.__setattr__(transfer, "concurrency", concurrency)
    object.__setattr__(transfer, "part_size", part)
    seen: dict[int, bytes] = {}
    read_into(remote, segments, transfer, lambda index, part: seen.__setitem__(index, seen.get(index, b"") + bytes(part)))
    for index, (offset, view) in enumerate(segments):
        assert bytes(view) == remote.data[offset : offset + len(view)] == seen[index]
    total = sum(size for _, size in layout)
    bound = max(part, -(-total // concurrency)) if streams else part
    assert all(0 < size <= bound for size in remote.sizes)
    runs, end = [], -1
    for offset, (_, size) in zip(offsets, layout):
        if offset == end:
            runs[-1] += size
        else:
            runs.append(size)
        end = offset + size
    assert len(remote.sizes) == sum(-(-run // bound) for run in runs)
    assert sum(remote.sizes) == total
