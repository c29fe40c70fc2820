"""Campaign 4b: hostile pickles wrapped in archives, and resource probes.

Each gadget would create a marker file if anything ran it: code execution
through ``builtins`` (eval, exec, getattr, __import__, open), ``os``/``posix``,
``subprocess``, ``operator``, ``functools.partial``, ``importlib``,
``pickle.loads``, numpy helpers (``runstring``, ``numpy.load`` with pickles,
``frompyfunc``), protocol tricks (INST, OBJ, a computed or memoized
``STACK_GLOBAL``, EXT codes, ``copyreg``), a Theano ``gpuarray`` context
pickle, an object-dtype NPY member in a snapshot, record dtypes forged to
crash numpy or corrupt memory (``forged_dtype_pickles``), and the five families
of attacks through trusted names only (:mod:`tests.soak.families`, generated
in every encoding). Every gadget is loaded through ``archive.load`` and
``CheckpointStore.restore`` (``load_snapshot`` for snapshots; ``read_arrays``
and ``verify`` for Theano's layout, which read gpuarray context names): it must
be refused with an ``ArchiveError`` or ``UntrustedTypeError`` and the marker
must never appear; the worker crashing (a segfault) fails the campaign.

Resource probes (deeply nested pickles, trusted constructors asked for a
gigabyte, a record dtype declaring 800 MB of objects) must be refused or loaded within 2 s without growing the process
by more than ``PROBE_GROWTH``; the worker runs under ``RLIMIT_AS``.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import resource
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .env import SoakEnv, start_worker
from .families import family_archive, family_pickles
from .mutations import deep_pickle, forged_dtype_pickles, lying_pickle, record_of_objects
from .report import CampaignResult, Tally
from .scale import Scale

MEMORY_LIMIT = 2 << 30
PROBE_GROWTH = 256 << 20
PROBE_SECONDS = 2.0


def _g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _v(value: Any) -> bytes:
    """A value's opcodes (no PROTO, no STOP)."""
    return pickle.dumps(value, protocol=3)[2:-1]


def _call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def gadgets(marker: Path, folder: Path) -> dict[str, bytes]:
    """Hostile pickle streams by name; each would create ``marker`` if run."""
    cmd, py, m = f"touch {marker}", f"open({str(marker)!r}, 'w').close()", str(marker)
    os_system = _call(_g("os", "system"), _v(cmd))
    evil_npy = folder / "evil.npy"
    evil_npy.write_bytes(_pickle(os_system))
    import_os = _call(_g("importlib", "import_module"), _v("os"))
    return {
        "builtins.eval": _pickle(_call(_g("builtins", "eval"), _v(py))),
        "builtins.exec": _pickle(_call(_g("builtins", "exec"), _v(py))),
        "__builtin__.eval (py2 name)": _pickle(_call(_g("__builtin__", "eval"), _v(py))),
        "builtins.open": _pickle(_call(_g("builtins", "open"), _v(m), _v("w"))),
        "builtins.getattr(__import__('os'), 'system')": _pickle(_call(
            _call(_g("builtins", "getattr"), _call(_g("builtins", "__import__"), _v("os")), _v("system")), _v(cmd))),
        "os.system": _pickle(os_system),
        "posix.system": _pickle(_call(_g("posix", "system"), _v(cmd))),
        "subprocess.Popen": _pickle(_call(_g("subprocess", "Popen"), _v(["touch", m]))),
        "subprocess.run": _pickle(_call(_g("subprocess", "run"), _v(["touch", m]))),
        "operator.methodcaller": _pickle(_call(_call(_g("operator", "methodcaller"), _v("system"), _v(cmd)), import_os)),
        "operator.attrgetter": _pickle(_call(_call(_call(_g("operator", "attrgetter"), _v("system")), import_os), _v(cmd))),
        "functools.partial": _pickle(_call(_call(_g("functools", "partial"), _g("os", "system"), _v(cmd)))),
        "importlib.import_module": _pickle(_call(_call(_g("builtins", "getattr"), import_os, _v("system")), _v(cmd))),
        "pickle.loads": _pickle(_call(_g("pickle", "loads"), _v(_pickle(os_system)))),
        "_pickle.loads": _pickle(_call(_g("_pickle", "loads"), _v(_pickle(os_system)))),
        "numpy runstring": _pickle(_call(_g("numpy.testing._private.utils", "runstring"), _v(py), _v({}))),
        "numpy.load(allow_pickle=True)": _pickle(_call(_g("numpy", "load"), _v(str(evil_npy)), _v(None), _v(True))),
        "numpy.frompyfunc(os.system)": _pickle(_call(
            _call(_g("numpy", "frompyfunc"), _g("os", "system"), _v(1), _v(1)), _v(cmd))),
        "INST os.system": b"(" + _v(cmd) + b"ios\nsystem\n.",
        "OBJ os.system": b"\x80\x02(" + _g("os", "system") + _v(cmd) + b"o.",
        "STACK_GLOBAL from a computed module name": b"\x80\x04" + _call(_g("builtins", "str"), _v("os"))
        + _v("system") + b"\x93(" + _v(cmd) + b"tR.",
        "STACK_GLOBAL through the memo": b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93(" + _v(cmd) + b"tR.",
        "EXT1 code": b"\x80\x02\x82\x01(" + _v(cmd) + b"tR.",
        "copyreg._reconstructor(Popen)": _pickle(_call(
            _g("copyreg", "_reconstructor"), _g("subprocess", "Popen"), _g("builtins", "object"), _v(None))),
        "builtins.__import__": _pickle(_call(_g("builtins", "__import__"), _v("os"))),
    }


def _manifest() -> bytes:
    from luigi_checkpoint.storage import archive

    out = io.BytesIO()
    archive.dump({}, out)
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as z:
        return z.read("manifest.json")


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in members:
            z.writestr(name, content)
    return out.getvalue()


def hostile_inputs(marker: Path, folder: Path) -> dict[str, tuple[str, bytes]]:
    """``name -> (kind, bytes)``: archives with a hostile pickle, a hostile
    gpuarray context, and a snapshot with an object-dtype NPY member."""
    manifest = _manifest()
    pickles = {**gadgets(marker, folder), **forged_dtype_pickles()}
    inputs = {name: ("archive", _zip([("pkl", data), ("manifest.json", manifest)])) for name, data in pickles.items()}
    os_system = _pickle(_call(_g("os", "system"), _v(f"touch {marker}")))
    npy = io.BytesIO()
    np.save(npy, np.zeros(2))
    for name, (family, data) in family_pickles(random.Random(len(inputs))).items():
        inputs[f"{family} family: {name}"] = ("archive", family_archive(family, data))
        if family == "gpuarray prefix":
            inputs[f"{family} family, Theano's layout: {name}"] = (
                "theano", family_archive(family, data, manifest=False))
    inputs["gpuarray context os.system"] = ("archive", _zip([
        ("x", os_system + npy.getvalue()), ("pkl", _pid_pickle("gpuarray.x")),
        ("manifest.json", manifest)]))
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = header.ljust(118) + b"\n"
    snapshot_manifest = json.dumps({
        "format": "luigi-checkpoint/snapshot", "format_version": 1, "created": "2026-01-01T00:00:00+00:00",
        "source": None, "metadata": {},
        "arrays": [{"name": "x", "member": "x.npy", "dtype": "|O", "shape": [1], "nbytes": 8, "sha256": "0" * 64}],
    }).encode()
    inputs["snapshot object NPY with os.system"] = ("snapshot", _zip([
        ("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + os_system),
        ("manifest.json", snapshot_manifest)]))
    return inputs


def _pid_pickle(pid: str) -> bytes:
    """A pickle of one persistent id (``BINPERSID``)."""
    return b"\x80\x02" + _v(pid) + b"Q."


def probes(depths: tuple[int, ...]) -> dict[str, bytes]:
    """Pickles that cost time or memory through trusted names only."""
    manifest = _manifest()
    out = {}
    for depth in depths:
        for seed in range(4):
            out[f"deep or lying-length pickle, depth {depth}, seed {seed}"] = deep_pickle(random.Random(seed), (depth,))
    for seed in range(6):
        out[f"trusted constructor asked for 1 GB, seed {seed}"] = lying_pickle(random.Random(seed), (10**9,))
    out["record declaring 10**8 objects (800 MB) in 364 bytes"] = record_of_objects(10**8)
    return {name: _zip([("pkl", data), ("manifest.json", manifest)]) for name, data in out.items()}


def _refused_if_problems(problems: list[str]) -> None:
    from luigi_checkpoint.storage.errors import ArchiveError

    if problems:
        raise ArchiveError("; ".join(problems))


def hostile_worker(folder: str, depths: tuple[int, ...], out: str) -> None:
    """Worker: load every hostile input and probe; report as JSON."""
    from luigi_checkpoint.storage import archive
    from luigi_checkpoint.storage.checkpoints import CheckpointStore, archive_name
    from luigi_checkpoint.storage.errors import ArchiveError, CheckpointError, UntrustedTypeError
    from luigi_checkpoint.storage.snapshot import load_snapshot

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, resource.RLIM_INFINITY))
    base = Path(folder)
    marker = base / "MARKER"
    results: list[dict[str, Any]] = []

    def attempt(name: str, route: str, load: Callable[[], Any]) -> None:
        # the store may also refuse by skipping the archive: no good checkpoint to restore
        allowed = CheckpointError if route == "CheckpointStore.restore" else (ArchiveError, UntrustedTypeError)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.monotonic()
        try:
            load()
            outcome = "loaded"
        except allowed as exc:
            outcome = f"refused: {type(exc).__name__}"
            if "MemoryError" in str(exc):
                outcome = f"memory: {type(exc).__name__}: {exc}"
        except BaseException as exc:  # anything else is a finding
            outcome = f"escaped: {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}"
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        results.append({"name": name, "route": route, "outcome": outcome, "seconds": time.monotonic() - started,
                        "growth": growth, "marker": marker.exists()})
        marker.unlink(missing_ok=True)

    for index, (name, (kind, data)) in enumerate(hostile_inputs(marker, base).items()):
        if kind == "snapshot":
            attempt(name, "load_snapshot", lambda: load_snapshot(io.BytesIO(data)))
            continue
        if kind == "theano":  # what never unpickles the archive's pickle still reads the prefix
            attempt(name, "read_arrays", lambda: archive.read_arrays(io.BytesIO(data)))
            attempt(name, "verify", lambda: _refused_if_problems(archive.open_archive(io.BytesIO(data)).verify()))
        attempt(name, "archive.load", lambda: archive.load(io.BytesIO(data)))
        run = base / f"run-{index}"
        run.mkdir()
        (run / archive_name(1)).write_bytes(data)
        attempt(name, "CheckpointStore.restore", lambda: CheckpointStore(str(run)).restore())
    for name, data in probes(depths).items():
        attempt(name, "probe", lambda: archive.load(io.BytesIO(data)))
    Path(out).write_text(json.dumps(results))


def run(scale: Scale, env: SoakEnv) -> CampaignResult:
    tally = Tally("hostile pickles and resource probes")
    folder = env.folder("hostile")
    out = folder / "results.json"
    worker = start_worker(hostile_worker, str(folder), scale.probe_depths, str(out))
    worker.join(600)
    if not out.exists():
        tally.trial([f"hostile worker died: exit {worker.exitcode}"])
        return tally.result(stores_data=False)
    for r in json.loads(out.read_text()):
        tally.time(r["seconds"])
        problems = []
        label = f"{r['name']} via {r['route']}"
        if r["marker"]:
            problems.append(f"SIDE EFFECT, the gadget ran: {label}")
        if r["route"] == "probe":
            if r["seconds"] > PROBE_SECONDS:
                problems.append(f"slow probe: {label} took {r['seconds']:.1f} s ({r['outcome']})")
            if r["growth"] > PROBE_GROWTH or r["outcome"].startswith("memory"):
                problems.append(f"allocation driven by the input: {label} grew the process by {r['growth'] >> 20} MB ({r['outcome'][:120]})")
            if r["outcome"].startswith("escaped"):
                problems.append(f"escaped: {label}: {r['outcome']}")
        elif r["outcome"] == "loaded":
            problems.append(f"hostile input loaded: {label}")
        elif not r["outcome"].startswith("refused"):
            problems.append(f"{r['outcome'].split(':')[0]}: {label}: {r['outcome']}")
        tally.trial(problems)
    return tally.result(stores_data=False)
