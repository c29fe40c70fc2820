"""The checkpoint store on local disk, file://, memory:// and S3 (moto server)."""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from luigi_checkpoint.storage import _s3claim, archive
from luigi_checkpoint.storage.checkpoints import (
    MAX_STEP,
    ArrayInfo,
    CheckpointStore,
    archive_name,
    step_of,
)
from luigi_checkpoint.storage.fs import TEMP_GRACE
from luigi_checkpoint.storage.errors import (
    ArchiveError,
    CheckpointNotFoundError,
    StepExistsError,
    UntrustedTypeError,
)

from .conftest import BUCKET, Root, S3Server
from .helpers_store import assert_same, atomic_s3_front_end, make_state
from .soak.faultproxy import FaultPlan, FaultProxy

HELPER = Path(__file__).with_name("helpers_store.py")


def open_store(root: Root, **options: Any) -> CheckpointStore:
    return CheckpointStore(root.url, storage_options=root.storage_options, **options)


def put(root: Root, name: str, data: bytes) -> None:
    fs = root.fs()
    path = f"{fs._strip_protocol(root.url)}/{name}"
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    fs.pipe_file(path, data)
    fs.invalidate_cache()


def store_warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "luigi_checkpoint.storage.checkpoints")


def read(root: Root, step: int) -> bytes:
    fs = root.fs()
    fs.invalidate_cache()
    return fs.cat_file(f"{fs._strip_protocol(root.url)}/{archive_name(step)}")


# -- naming --------------------------------------------------------------


def test_archive_names_sort_like_steps_past_1e9() -> None:
    steps = [0, 7, 999_999_999, 1_000_000_000, 10**11, MAX_STEP]
    names = [archive_name(s) for s in steps]
    assert names == sorted(names)
    assert names[2:4] == ["step-000999999999.zip", "step-001000000000.zip"]
    assert [step_of(n) for n in names] == steps


@pytest.mark.parametrize("step", [-1, MAX_STEP + 1, 10**15])
def test_steps_outside_twelve_digits_are_refused(step: int) -> None:
    with pytest.raises(ValueError, match=str(step)):
        archive_name(step)


@pytest.mark.parametrize(
    "name",
    ["step-12.zip", "step-0000000000031.zip", "step-000000000003.zip.bak",
     "step-00000000000a.zip", ".step-000000000004.zip.0a1b.partial", "notes.txt"],
)
def test_other_names_are_not_archives(name: str) -> None:
    assert step_of(name) is None


# -- save and restore ----------------------------------------------------


def test_save_and_restore_round_trip(root: Root) -> None:
    store = open_store(root)
    states = {step: make_state(step) for step in (10, 20, 30)}
    for step, state in states.items():
        info = store.save(step, state)
        assert info is not None and info.step == step and info.url == store.url_of(step)
    for step, state in states.items():
        got_step, got = store.restore(step)
        assert got_step == step
        assert_same(got, state)
    got_step, got = store.restore()
    assert got_step == 30
    assert_same(got, states[30])


def test_info_reports_the_manifest(root: Root) -> None:
    store = open_store(root)
    before = datetime.now(timezone.utc)
    saved = store.save(5, make_state(5), {"metrics": {"loss": 0.25}, "host": "worker-1"})
    info = store.info(5)
    assert info == saved
    assert info.metadata == {"metrics": {"loss": 0.25}, "host": "worker-1", "step": 5}
    assert info.size == root.fs().size(root.fs()._strip_protocol(info.url))
    assert info.created.tzinfo is not None
    assert before - timedelta(seconds=1) <= info.created <= datetime.now(timezone.utc)
    arrays = {a.name: a for a in info.arrays}
    assert arrays["model/W"] == ArrayInfo("model/W", np.dtype(np.float64).str, (8, 4), 256)
    assert arrays["model/b"] == ArrayInfo("model/b", np.dtype(np.float32).str, (4,), 16)
    assert len(arrays) == 5


def test_metadata_must_be_json(root: Root) -> None:
    store = open_store(root)
    with pytest.raises(TypeError, match="JSON"):
        store.save(1, make_state(1), {"when": datetime.now()})
    assert store.steps() == []


def test_latest_step_after_saves_out_of_order(root: Root) -> None:
    store = open_store(root, keep_last=None)
    for step in (5, 2, 9, 7):
        store.save(step, make_state(step))
    assert store.steps() == [2, 5, 7, 9]
    assert store.latest_step() == 9
    step, state = store.restore()
    assert step == 9
    assert_same(state, make_state(9))


def test_latest_step_reads_only_the_newest_archives(
    root: Root, caplog: pytest.LogCaptureFixture
) -> None:
    put(root, archive_name(1), b"damaged")
    put(root, archive_name(2), b"")
    store = open_store(root, keep_last=None)
    store.save(3, make_state(3))
    with caplog.at_level(logging.WARNING, logger="luigi_checkpoint.storage.checkpoints"):
        assert store.latest_step() == 3
    assert store_warnings(caplog) == ""  # the damaged older archives were never opened

def test_steps_past_1e9_are_found_in_order(root: Root) -> None:
    store = open_store(root, keep_last=None)
    steps = [10**11, 7, 1_000_000_000, 999_999_999]
    for step in steps:
        store.save(step, make_state(step % 1000))
    assert store.steps() == sorted(steps)
    assert store.latest_step() == 10**11
    assert store.restore()[0] == 10**11
    fs = root.fs()
    fs.invalidate_cache()
    listed = sorted(p.rpartition("/")[2] for p in fs.ls(fs._strip_protocol(root.url), detail=False))
    assert [step_of(n) for n in listed] == sorted(steps)


def test_foreign_and_temp_files_are_ignored_and_kept(root: Root) -> None:
    foreign = ["notes.txt", "step-12.zip", "step-0000000000031.zip",
               "step-000000000003.zip.bak", ".step-000000000004.zip.0a1b.partial",
               "step-000000000009.zip/inner"]
    for name in foreign:
        put(root, name, b"not a checkpoint")
    store = open_store(root, keep_last=1)
    store.save(1, make_state(1))
    store.save(2, make_state(2))
    assert store.steps() == [2]
    assert store.latest_step() == 2
    fs = root.fs()
    base = fs._strip_protocol(root.url)
    for name in foreign:
        assert fs.cat_file(f"{base}/{name}") == b"not a checkpoint"


def test_second_save_of_a_step_fails_and_keeps_the_first(root: Root) -> None:
    store = open_store(root)
    store.save(3, make_state(3))
    first = read(root, 3)
    with pytest.raises(StepExistsError, match=archive_name(3)):
        open_store(root).save(3, make_state(4))
    assert read(root, 3) == first
    assert_same(store.restore(3)[1], make_state(3))


def test_empty_store(root: Root) -> None:
    store = open_store(root)
    assert store.steps() == []
    assert store.latest_step() is None
    assert store.prune() == []
    with pytest.raises(CheckpointNotFoundError, match="no good checkpoint"):
        store.restore()
    for call in (store.restore, store.info, store.verify):
        with pytest.raises(CheckpointNotFoundError, match=archive_name(3)):
            call(3)


def test_load_options_are_passed_on_and_untrusted_types_are_not_skipped(root: Root) -> None:
    store = open_store(root)
    store.save(1, make_state(1))
    store.save(2, {"model": Model(np.arange(3.0))})
    with pytest.raises(UntrustedTypeError, match="Model"):
        store.restore()
    step, state = store.restore(trusted=[Model])
    assert step == 2
    np.testing.assert_array_equal(state["model"].weights, np.arange(3.0))


class Model:
    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights


# -- damaged archives ----------------------------------------------------


def flip(data: bytes, at: int, bits: int = 0x04) -> bytes:
    return data[:at] + bytes([data[at] ^ bits]) + data[at + 1 :]


DAMAGE = {
    "truncated": lambda data: data[: len(data) * 2 // 3],
    "zero-bytes": lambda data: b"",
    "flipped-manifest": lambda data: flip(data, data.rindex(b'"format"') + 3),
    "flipped-end-record": lambda data: flip(data, len(data) - 6),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_archive_is_skipped(
    root: Root, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(root)
    for step in (1, 2, 3):
        store.save(step, make_state(step))
    put(root, archive_name(3), DAMAGE[damage](read(root, 3)))
    with caplog.at_level(logging.WARNING, logger="luigi_checkpoint.storage.checkpoints"):
        assert store.latest_step() == 2
        step, state = store.restore()
    assert step == 2
    assert_same(state, make_state(2))
    assert store.url_of(3) in store_warnings(caplog)
    report = store.verify(3)
    assert not report.ok and report.problems and report.url == store.url_of(3)
    assert store.verify(2).ok and store.verify(2).problems == ()


def test_restore_falls_back_when_array_data_is_damaged(
    root: Root, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(root)
    store.save(1, make_state(1))
    store.save(2, make_state(2))
    manifest = archive.read_manifest(store.url_of(2), storage_options=root.storage_options)
    offset = next(a["offset"] for a in manifest["arrays"] if a["name"] == "model/W")
    put(root, archive_name(2), flip(read(root, 2), offset + 5))
    assert store.latest_step() == 2
    with caplog.at_level(logging.WARNING, logger="luigi_checkpoint.storage.checkpoints"):
        step, state = store.restore()
    assert step == 1
    assert_same(state, make_state(1))
    assert store.url_of(2) in store_warnings(caplog)
    with pytest.raises(ArchiveError, match=archive_name(2)):
        store.restore(2)
    assert not store.verify(2).ok



def test_a_store_of_damaged_archives_has_no_latest_step(
    root: Root, caplog: pytest.LogCaptureFixture
) -> None:
    put(root, archive_name(1), b"PK\x03\x04 half an archive")
    put(root, archive_name(2), b"")
    store = open_store(root)
    assert store.steps() == [1, 2]
    with caplog.at_level(logging.WARNING, logger="luigi_checkpoint.storage.checkpoints"):
        assert store.latest_step() is None
        with pytest.raises(CheckpointNotFoundError, match="no good checkpoint"):
            store.restore()
    assert store.url_of(1) in store_warnings(caplog) and store.url_of(2) in store_warnings(caplog)


# -- retention -----------------------------------------------------------


def test_saves_prune_to_keep_last_and_keep_every(root: Root) -> None:
    store = open_store(root, keep_last=2, keep_every=5)
    for step in range(13):
        store.save(step, make_state(step))
        assert store.steps()[-2:] == ([step - 1, step] if step else [0])
    assert store.steps() == [0, 5, 10, 11, 12]


def test_prune_returns_the_deleted_steps(root: Root) -> None:
    writer = open_store(root, keep_last=None)
    for step in range(1, 7):
        writer.save(step, make_state(step))
    assert writer.prune() == []
    pruner = open_store(root, keep_last=2, keep_every=3)
    assert pruner.prune(dry_run=True) == [1, 2, 4]
    assert pruner.steps() == [1, 2, 3, 4, 5, 6]
    assert pruner.prune() == [1, 2, 4]
    assert pruner.steps() == [3, 5, 6]
    assert pruner.prune() == []


@pytest.mark.parametrize("options", [{"keep_last": 0}, {"keep_every": 0}, {"keep_last": -2}])
def test_retention_options_must_be_positive(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        CheckpointStore("memory://run", **options)


def test_prune_never_deletes_the_newest_good_archive(root: Root) -> None:
    writer = open_store(root, keep_last=None)
    for step in range(1, 5):
        writer.save(step, make_state(step))
    put(root, archive_name(5), read(root, 4)[:100])
    put(root, archive_name(6), b"")
    pruner = open_store(root, keep_last=2)
    assert pruner.prune() == [1, 2, 3]
    assert pruner.steps() == [4, 5, 6]
    step, state = pruner.restore()
    assert step == 4
    assert_same(state, make_state(4))


def test_save_deletes_only_abandoned_temp_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".step-000000000001.zip.1f2e3d.partial"
    fresh = run / ".step-000000000002.zip.4c5b6a.partial"
    held = run / ".step-000000000004.zip.7d8e9f.partial"
    foreign = run / ".notes.txt.1f2e3d.partial"
    old = time.time() - TEMP_GRACE - 60
    for path in (stale, fresh, held, foreign):
        path.write_bytes(b"half a checkpoint")
    for path in (stale, held, foreign):
        os.utime(path, (old, old))
    with open(held, "rb") as writer:  # a live (stalled) writer holds its lock
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        CheckpointStore(os.fspath(run)).save(3, make_state(3))
    assert not stale.exists()
    assert fresh.exists() and held.exists() and foreign.exists()


# -- asynchronous saves --------------------------------------------------


def test_async_save_is_not_affected_by_later_mutation(root: Root) -> None:
    store = open_store(root)
    state = make_state(1, size=200_000)
    expected = copy.deepcopy(state)
    assert store.save(1, state, {"loss": 1.5}, block=False) is None
    state["model"]["W"][:] = -1.0
    state["optimizer"]["velocity"][1] += 1
    state["counters"]["step"] = 99
    state["extra"] = np.zeros(3)
    info = store.wait()
    assert info is not None and info.step == 1 and info.metadata["loss"] == 1.5
    assert store.wait() is None
    step, restored = store.restore()
    assert step == 1
    assert_same(restored, expected)


def test_consecutive_async_saves_reuse_buffers_but_keep_each_steps_values(root: Root) -> None:
    store = open_store(root, keep_last=None)
    state = make_state(1, size=1000)
    expected = {}
    for step in (1, 2, 3):
        state["model"]["W"] += step  # the training loop changes the arrays in place
        state["counters"]["step"] = step
        expected[step] = copy.deepcopy(state)
        store.save(step, state, block=False)
        state["model"]["W"][:] = np.nan  # mutated while the write runs
        state["model"]["W"][:] = expected[step]["model"]["W"]
    store.wait()
    spare = dict(store._spare.arrays)
    store.save(4, state, block=False)
    assert store.wait().step == 4
    assert dict(store._spare.arrays)["model/W"] is spare["model/W"]  # copied into, not allocated
    for step in (1, 2, 3):
        assert_same(store.restore(step)[1], expected[step])


def test_async_failure_is_raised_by_wait_once(root: Root) -> None:
    store = open_store(root)
    store.save(1, make_state(1))
    first = read(root, 1)
    assert store.save(1, make_state(2), block=False) is None
    with pytest.raises(StepExistsError, match=archive_name(1)):
        store.wait()
    assert store.wait() is None
    assert read(root, 1) == first


def test_async_failure_is_raised_by_the_next_call(root: Root) -> None:
    store = open_store(root)
    store.save(1, make_state(1))
    store.save(1, make_state(2), block=False)
    with pytest.raises(StepExistsError, match=archive_name(1)):
        store.save(2, make_state(2))
    assert store.steps() == [1]
    store.save(2, make_state(2))
    assert store.steps() == [1, 2]


def test_async_saves_run_one_at_a_time_and_are_seen_by_reads(root: Root) -> None:
    store = open_store(root)
    store.save(1, make_state(1, size=50_000), block=False)
    store.save(2, make_state(2, size=50_000), block=False)
    step, state = store.restore()
    assert step == 2
    assert_same(state, make_state(2, size=50_000))
    assert store.steps() == [1, 2]


def test_leaving_the_store_waits_for_the_background_save(root: Root) -> None:
    with open_store(root) as store:
        store.save(1, make_state(1, size=50_000), block=False)
    assert open_store(root).steps() == [1]
    with pytest.raises(StepExistsError), open_store(root) as store:
        store.save(1, make_state(1), block=False)


# -- several processes ---------------------------------------------------


@pytest.fixture(scope="session")
def atomic_s3(s3_server: S3Server) -> Iterator[S3Server]:
    """The S3 server with atomic conditional writes: for moto, a second front end
    to its backend; any other server as it is."""
    if s3_server.kind != "moto":
        yield s3_server
        return
    with atomic_s3_front_end() as endpoint_url:
        yield S3Server(endpoint_url)


@pytest.fixture
def shared_root(request: pytest.FixtureRequest, tmp_path: Path) -> Root:
    """An empty folder that several processes can share: local disk or S3."""
    if request.param == "local":
        return Root("local", os.fspath(tmp_path / "run"))
    request.getfixturevalue("s3")  # empties the bucket
    server: S3Server = request.getfixturevalue("atomic_s3")
    return Root("s3", f"s3://{BUCKET}/run", server.storage_options)


def start_writers(root: Root, jobs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    procs = []
    for job in jobs:
        job = {"root": root.url, "storage_options": root.storage_options, **job}
        proc = subprocess.Popen(
            [sys.executable, os.fspath(HELPER), json.dumps(job)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def finish(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    outcomes = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        outcomes.append(json.loads(out))
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("shared_root", ["local", "s3"], indirect=True)
def test_two_processes_saving_the_same_step_one_wins(shared_root: Root) -> None:
    root = shared_root
    jobs = [{"job": "race", "step": 7, "seed": seed, "size": 20_000} for seed in (1, 2)]
    outcomes = finish(start_writers(root, jobs))
    results = [o["result"] for o in outcomes]
    assert sorted(results) == ["exists", "won"]
    winner = jobs[results.index("won")]["seed"]
    store = open_store(root)
    assert store.steps() == [7]
    assert store.verify(7).ok
    assert_same(store.restore(7)[1], make_state(winner, size=20_000))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shared_root", "steps", "keep_every"),
    # S3 runs fewer steps: every save there is about eight requests to moto.
    [("local", 200, 50), ("s3", 40, 10)],
    indirect=["shared_root"],
)
def test_two_processes_save_and_prune_concurrently(
    shared_root: Root, steps: int, keep_every: int
) -> None:
    root = shared_root
    jobs = [{"job": "run", "start": start, "stop": steps, "stride": 2,
             "keep_last": 3, "keep_every": keep_every} for start in (0, 1)]
    reader = open_store(root)
    procs = start_writers(root, jobs)
    seen: list[int] = []
    while any(proc.poll() is None for proc in procs):
        try:
            step, state = reader.restore()
        except CheckpointNotFoundError:
            assert not seen, "a checkpoint was found before, the newest must stay restorable"
        else:
            assert_same(state, make_state(step))
            seen.append(step)
        time.sleep(0.05)
    outcomes = finish(procs)
    assert [o["saved"] for o in outcomes] == [list(range(0, steps, 2)), list(range(1, steps, 2))]
    assert seen == sorted(seen) and len(seen) > 1
    kept = [*range(0, steps - 3, keep_every), steps - 3, steps - 2, steps - 1]
    assert reader.steps() == kept
    assert all(reader.verify(step).ok for step in kept)
    assert reader.restore()[0] == steps - 1



# -- exclusive saves on servers whose conditional complete is not atomic --


def _claims_under(fs: Any, folder: str) -> list[str]:
    fs.invalidate_cache()
    return [name for name in fs.find(folder) if ".claim-" in name]


@pytest.mark.slow
def test_two_processes_saving_new_s3_steps_at_once_one_wins_every_time(
    s3: S3Server, atomic_s3: S3Server
) -> None:
    """On SeaweedFS a conditional CompleteMultipartUpload is not atomic: without
    claims both saves returned in several of these 20 races (the second archive
    replacing the first). With them exactly one wins each race."""
    root = Root("s3", f"s3://{BUCKET}/race", atomic_s3.storage_options)
    rounds = 20
    jobs = [{"job": "race", "step": 1, "seed": seed, "size": 8, "rounds": rounds} for seed in (1, 2)]
    procs = start_writers(root, jobs)
    store = open_store(root)
    for round_ in range(rounds):
        results = [json.loads(proc.stdout.readline())["result"] for proc in procs]  # type: ignore[union-attr]
        assert sorted(results) == ["exists", "won"], f"race {round_}: {results}"
        winner = jobs[results.index("won")]["seed"]
        assert_same(store.restore(1 + round_)[1], make_state(winner, size=8))
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert _claims_under(store.root.fs, f"{BUCKET}/race") == []


def test_an_s3_claim_left_by_a_killed_writer_does_not_block_the_step(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_s3claim, "CLAIM_STALE", 0.5)
    store = CheckpointStore(f"s3://{BUCKET}/killed", storage_options=s3.storage_options)
    fs = store.root.fs
    fs.pipe_file(f"{BUCKET}/killed/.{archive_name(3)}.claim-0.partial", b"a writer killed while completing")
    store.save(3, make_state(3))
    assert store.steps() == [3]
    assert_same(store.restore(3)[1], make_state(3))
    assert _claims_under(fs, f"{BUCKET}/killed") == []


def test_an_s3_claim_whose_answer_was_lost_is_still_this_writers(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server makes the claim, the answer is lost, the client retries and
    gets 412: the claim holds this writer's token, so it goes on with it
    instead of waiting it out as a dead writer's and claiming the next one."""
    monkeypatch.setattr(_s3claim, "CLAIM_STALE", 0.5)
    plan = FaultPlan({"reset_after": 1.0}, methods=frozenset({"PUT"}), target=".claim-0.partial", max_faults=1)
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        CheckpointStore(f"s3://{BUCKET}/lost", storage_options=s3.options_via(proxy.url)).save(1, make_state(1))
    assert proxy.injected == {"reset_after": 1}
    assert not [r for r in proxy.received if ".claim-1" in r]
    store = CheckpointStore(f"s3://{BUCKET}/lost", storage_options=s3.storage_options)
    assert_same(store.restore(1)[1], make_state(1))
    assert _claims_under(store.root.fs, f"{BUCKET}/lost") == []
