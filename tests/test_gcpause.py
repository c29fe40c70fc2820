"""The garbage collector is paused while a save makes its per-array objects,
and left as the caller had it, whatever happens."""

from __future__ import annotations

import gc
import io
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from luigi_checkpoint.storage import archive
from luigi_checkpoint.storage._gcpause import paused


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


class _SeesCollector:
    """Records whether the collector runs while it is pickled, then fails if asked."""

    seen: list[bool] = []

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __reduce__(self) -> tuple[type, tuple[bool]]:
        _SeesCollector.seen.append(gc.isenabled())
        if self.fail:
            raise RuntimeError("refused")
        return (_SeesCollector, (False,))


@pytest.mark.parametrize("enabled", [True, False])
def test_a_save_pauses_the_collector_and_leaves_it_as_it_was(enabled: bool) -> None:
    (gc.enable if enabled else gc.disable)()
    _SeesCollector.seen = []
    archive.dump({"w": np.arange(3), "probe": _SeesCollector()}, io.BytesIO())
    assert _SeesCollector.seen == [False] and gc.isenabled() is enabled
    with pytest.raises(RuntimeError, match="refused"):
        archive.dump({"probe": _SeesCollector(fail=True)}, io.BytesIO())
    assert gc.isenabled() is enabled


def test_pauses_in_several_threads_end_with_the_last() -> None:
    gc.enable()
    inside, release = threading.Barrier(2), threading.Event()

    def hold() -> None:
        with paused():
            inside.wait()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    with paused():
        inside.wait()
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread still holds its pause
    release.set()
    thread.join()
    assert gc.isenabled()
