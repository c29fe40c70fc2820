"""One case in a fresh process: ``python -m benchmarks.worker SPEC_JSON``.

A fresh process per case keeps the cases from polluting each other's memory
and caches. The worker reads the state from the raw file, imports what the case
needs, resets the RSS high-water mark, runs the case ``repeats`` times and
prints one JSON line: the times and the peak memory above the RSS it started
from (the state itself for saves, nothing for loads).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
from typing import Any

from . import memory, stall
from .cases import case_named
from .state import Layout, read_raw, warm_page_cache


def _prepare(requires: tuple[str, ...]) -> None:
    for module in requires:
        importlib.import_module(module)


def _measure(repeats: int, before: Any, timed: Any, after: Any) -> dict[str, Any]:
    gc.collect()
    base = memory.rss()
    exact = memory.reset_peak()
    times, after_times = [], []
    for i in range(repeats):
        before(i)
        start = time.perf_counter()
        timed(i)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        after(i)
        after_times.append(time.perf_counter() - start)
    return {
        "times": times,
        "after_times": after_times,
        "peak_extra_bytes": max(0, memory.peak() - base),
        "peak_exact": exact,
    }


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run(spec: dict[str, Any]) -> dict[str, Any]:
    layout = Layout.from_json(spec["layout"])
    folder, group, repeats = spec["dir"], spec["group"], spec["repeats"]
    source = os.path.join(folder, spec["state_file"])
    if group == "async":
        state = read_raw(layout, source)
        _prepare(stall.REQUIRES[spec["name"]])
        start, finish = stall.runner(spec["name"], state, folder)
        return _measure(repeats, lambda i: os.sync(), start, finish)
    case = case_named(group, spec["name"])
    _prepare(case.requires)
    path = os.path.join(folder, case.file)
    if group == "save":
        state = read_raw(layout, source)

        def clean(i: int) -> None:
            _remove(path)
            os.sync()

        return _measure(repeats, clean, lambda i: case.run(state, path), lambda i: None)
    warm_page_cache(path)
    result: list[Any] = []

    def drop(i: int) -> None:
        result.clear()
        gc.collect()

    return _measure(repeats, drop, lambda i: result.append(case.run(layout, path)), drop)


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
