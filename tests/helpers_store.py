"""Training states shared by the store tests, a writer process for them, and
an S3 front end whose conditional writes are atomic.

Run as a script, this is one writer process of a concurrency test::

    python helpers_store.py '{"root": ..., "storage_options": {...}, ...}'

It imports everything, prints ``ready``, then for each of its ``rounds``
(default 1) waits for a line on stdin (so that two writers start together),
does its job and prints one JSON line; a race of round ``r`` saves step
``step + r``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def make_state(seed: int, *, size: int = 8) -> dict[str, Any]:
    """A small training state whose every value depends on ``seed``."""
    rng = np.random.default_rng(seed)
    return {
        "model": {
            "W": rng.standard_normal((size, 4)),
            "b": np.full(4, seed, dtype=np.float32),
        },
        "optimizer": {"velocity": [rng.standard_normal(4), rng.integers(0, 9, 3, dtype=np.int16)]},
        "mask": rng.integers(0, 2, 7).astype(bool),
        "counters": {"step": seed, "name": f"run-{seed}"},
    }


def assert_same(actual: Any, expected: Any) -> None:
    """Exact equality of nested states: same types, same dtypes, same bits."""
    assert type(actual) is type(expected), (type(actual), type(expected))
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same(a, e)
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    else:
        assert actual == expected


@contextmanager
def atomic_s3_front_end() -> Iterator[str]:
    """Serve this process's moto S3 backend one request at a time; yield its URL.

    moto checks ``If-None-Match`` and then writes, without a lock, so two
    concurrent conditional writes of one key may both succeed; real S3 lets
    exactly one win. Handling one request at a time gives that atomicity.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ: dict[str, Any], respond: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return list(app(environ, respond))

    server = make_server(
        "127.0.0.1", 0, one_at_a_time, threaded=True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def _race(store: Any, job: dict[str, Any]) -> dict[str, Any]:
    from luigi_checkpoint.storage.errors import StepExistsError

    try:
        store.save(job["step"] + job["round"], make_state(job["seed"], size=job["size"]))
    except StepExistsError:
        return {"result": "exists"}
    return {"result": "won"}


def _run(store: Any, job: dict[str, Any]) -> dict[str, Any]:
    from luigi_checkpoint.storage.errors import StepExistsError

    saved, existed = [], []
    for step in range(job["start"], job["stop"], job["stride"]):
        try:
            store.save(step, make_state(step), {"writer": job["start"]})
        except StepExistsError:
            existed.append(step)
        else:
            saved.append(step)
    return {"saved": saved, "exists": existed}


def main(argv: list[str]) -> int:
    from luigi_checkpoint.storage.checkpoints import CheckpointStore

    job = json.loads(argv[1])
    store = CheckpointStore(
        job["root"],
        keep_last=job.get("keep_last", 3),
        keep_every=job.get("keep_every"),
        storage_options=job.get("storage_options"),
    )
    print("ready", flush=True)
    for round_ in range(job.get("rounds", 1)):
        sys.stdin.readline()
        outcome = {"race": _race, "run": _run}[job["job"]](store, {**job, "round": round_})
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
