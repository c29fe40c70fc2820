"""Side-by-side benchmark of the checkpoint archive: ``python -m benchmarks.bench``.

Saves, loads and opens the same float32 state with our archive, a raw
``os.write``/``readinto`` baseline and the peers (pickle, ``np.savez``,
safetensors, torch), each case in a fresh process (its peak RSS measured
there), on local disk with a hot page cache; then the async-save stall, S3
transfers and ``latest_step()`` on the S3 server that ``LUIGI_CHECKPOINT_S3`` chooses
(a loopback moto server by default, see :mod:`tests.s3server`). Prints a table with
ratios to the baselines and the issue-6 targets; ``--json`` saves everything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from . import scaling, stall
from .cases import CASES, Case, unavailable
from .report import Row, Target, check_target, ratio, table, targets, targets_table
from .state import MiB, Layout, make_layout, make_state, write_raw

REPO = Path(__file__).resolve().parent.parent
SCALING_ARRAYS = 8
SCRATCH = REPO / ".bench-tmp"
GROUPS = ("save", "load", "open", "async", "s3", "latest", "scaling")
QUICK = {
    "size_mb": 8, "arrays": 4, "repeats": 1, "s3_size_mb": 2, "s3_archives": 50,
    "scaling_counts": "4,64", "scaling_count_mb": 1, "scaling_sizes_mb": "1,4", "s3_servers": "moto",
}
FULL = {
    "size_mb": 1024, "arrays": 8, "repeats": 3, "s3_size_mb": 256, "s3_archives": 10_000,
    "scaling_counts": "8,1000,10000,50000", "scaling_count_mb": 128, "scaling_sizes_mb": "64,256,1024",
    "s3_servers": "moto,seaweedfs",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, help="state size in MiB (default 1024)")
    p.add_argument("--arrays", type=int, help="number of arrays (default 8)")
    p.add_argument("--repeats", type=int, help="repeats per case, the median is shown (default 3)")
    p.add_argument("--s3-size-mb", type=int, help="state size for the S3 cases (default 256)")
    p.add_argument("--s3-archives", type=int, help="archives for latest_step() (default 10000)")
    p.add_argument(
        "--s3-servers",
        help="S3 servers of the transfer rows, side by side (default moto,seaweedfs; the first "
        "also runs latest_step(); see tests/s3server.py for the choices)",
    )
    p.add_argument(
        "--scaling-counts", help="numbers of arrays of the scaling table (default 8,1000,10000,50000)"
    )
    p.add_argument("--scaling-count-mb", type=int, help="their total MiB (default 128)")
    p.add_argument(
        "--scaling-sizes-mb",
        help="total MiB of the scaling table's 8 arrays (default 64,256,1024; 8192 needs ~20 GiB of RAM)",
    )
    p.add_argument("--groups", default=",".join(GROUPS), help=f"subset of {','.join(GROUPS)}")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--without", default="", help="peers to leave out as if not installed, e.g. torch,safetensors"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the local cases in this process (faster, peak memory less isolated)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repeat, in-process: a smoke test"
    )
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.in_process = args.in_process or args.quick
    args.without = tuple(m for m in args.without.split(",") if m)
    args.groups = tuple(g for g in args.groups.split(",") if g)
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        p.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    return args


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["in_process"]:
        from .worker import run

        try:
            return run(spec)
        except Exception as exc:  # reported in the table like a failed worker process
            print(f"[bench] {spec['group']} / {spec['name']} failed: {exc!r}", file=sys.stderr)
            return {"error": repr(exc)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"[bench] {spec['group']} / {spec['name']} failed:\n{proc.stderr}", file=sys.stderr)
        return {"error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def progress(message: str) -> None:
    """One line on stderr, so a long run shows where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _row(group: str, name: str, spec: dict[str, Any], nbytes: int, baseline: str | None) -> Row:
    result = _worker({**spec, "group": group, "name": name})
    if "error" in result:
        return Row(group, name, skipped=f"failed: {result['error'][:60]}")
    progress(
        f"{group} / {name}: times {', '.join(f'{t:.3f}' for t in result['times'])} s, "
        f"peak extra {result['peak_extra_bytes'] / MiB:.0f} MiB"
    )
    note = "in-process peak" if spec["in_process"] else ""
    note = note if result["peak_exact"] else "peak = ru_maxrss"
    return Row(
        group,
        name,
        tuple(result["times"]),
        nbytes,
        baseline,
        result["peak_extra_bytes"],
        note,
        extra={"after_times": result["after_times"]},
    )


def _baseline(case: Case) -> str:
    return next(
        c.name for c in CASES if c.group == case.group and c.baseline and c.fsync == case.fsync
    )


def local_rows(args: argparse.Namespace, folder: str, layout: Layout) -> list[Row]:
    """The save, load, open and async groups, one worker process per case."""
    spec = {
        "dir": folder,
        "layout": layout.to_json(),
        "repeats": args.repeats,
        "state_file": "state.bin",
        "in_process": args.in_process,
    }
    needed = {c.file for c in CASES if c.group in ("load", "open") and c.group in args.groups}
    rows = []
    for case in CASES:
        if case.group not in args.groups:
            continue
        missing = case.missing(args.without)
        if missing:
            rows.append(Row(case.group, case.name, skipped=f"n/a ({missing})"))
            continue
        if case.group != "save" and not os.path.exists(os.path.join(folder, case.file)):
            rows.append(Row(case.group, case.name, skipped=f"n/a (no {case.file} saved)"))
            continue
        nbytes = 0 if case.group == "open" else layout.nbytes
        baseline = None if case.baseline or case.group == "open" else _baseline(case)
        rows.append(_row(case.group, case.name, spec, nbytes, baseline))
        if case.group == "save" and case.file not in needed:
            os.unlink(os.path.join(folder, case.file))
    if "async" in args.groups:
        for name in stall.NAMES:
            missing = unavailable(stall.REQUIRES[name])
            if missing:
                rows.append(Row("async", name, skipped=f"n/a ({missing})"))
                continue
            baseline = None if name == stall.NAMES[0] else stall.NAMES[0]
            rows.append(_row("async", name, spec, layout.nbytes, baseline))
    return rows


def scaling_results(args: argparse.Namespace, folder: str) -> list[scaling.Result]:
    """The scaling table's points, measured in this process."""
    if "scaling" not in args.groups:
        return []
    counts = [int(n) for n in args.scaling_counts.split(",") if n]
    sizes = [int(n) * MiB for n in args.scaling_sizes_mb.split(",") if n]
    results = []
    for point in scaling.points(counts, args.scaling_count_mb * MiB, sizes, SCALING_ARRAYS):
        results.append(scaling.measure(point, folder, args.repeats, args.without))
        ratios = [(group, results[-1].ratio(group)[0]) for group in ("save", "load")]
        shown = ", ".join(f"{group} {r:.2f}x" for group, r in ratios if r is not None)
        progress(f"scaling / {point.label}: {shown or 'no peer'}")
    return results


def issue16_targets(rows: list[Row], scaled: list[scaling.Result]) -> list[Target]:
    """S3 throughput at least the s3fs peers' on every server; per-array cost
    within 1.5x of the fastest peer at 10,000 and 50,000 arrays."""
    found = []
    for row in rows:
        for ours, peer, what in (("ours save", "s3fs put_file", "save"), ("ours restore", "s3fs cat_file", "restore")):
            if row.group == "S3" and row.name.startswith(ours) and row.baseline:
                r = ratio(rows, row)
                server = row.name[len(ours) :].strip() or "first server"
                value = None if r is None else 1 / r
                found.append(check_target(f"S3 {what} vs {peer} {server}", value, 1.0, "{:.2f}x", lower=False))
    for result in scaled:
        if result.point.series == "arrays" and result.point.arrays in (10_000, 50_000):
            for group in ("save", "load"):
                value, peer = result.ratio(group)
                name = f"{group} of {result.point.label} vs {peer or 'peers'}"
                found.append(check_target(name, value, 1.5, "{:.2f}x"))
    return found


def s3_rows(args: argparse.Namespace, folder: str) -> list[Row]:
    """The S3 transfer group and the latest_step() group, on one S3 server."""
    wanted = [g for g in ("s3", "latest") if g in args.groups]
    if not wanted:
        return []
    missing = unavailable(("moto.server", "s3fs"))
    if missing:
        return [Row("S3", "all S3 cases", skipped=f"n/a ({missing})")]
    from . import s3

    ours = unavailable(("luigi_checkpoint.storage.checkpoints",))
    rows = []
    for index, choice in enumerate(c for c in args.s3_servers.split(",") if c):
        suffix = "" if index == 0 else f" [{choice}]"
        try:
            with s3.s3_server(choice) as server:
                if "s3" in wanted:
                    rows += _transfer_rows(args, folder, server, ours, suffix)
                if "latest" in wanted and index == 0:
                    rows += _latest_rows(args, server, ours)
        except Exception as exc:  # a server that cannot start: its rows say why
            skipped = f"n/a ({_failed(f'S3 server {choice}', exc)})"
            rows += [Row("S3", f"{name}{suffix}", skipped=skipped) for name, _ in s3.TRANSFERS]
    return rows


def _failed(what: str, exc: Exception) -> str:
    traceback.print_exception(exc, file=sys.stderr)
    return f"{what} failed: {exc!r}"[:80]


def _transfer_rows(
    args: argparse.Namespace, folder: str, server: Any, ours: str | None, suffix: str
) -> list[Row]:
    """Our save and restore against s3fs's put_file and cat_file on ``server``
    (``suffix`` names it in the rows of a second server)."""
    from . import s3

    layout = make_layout(args.s3_size_mb * MiB, args.arrays)
    state = make_state(layout, seed=1)
    raw = os.path.join(folder, "s3-state.bin")
    write_raw(state, raw)
    progress(f"S3 transfers of {layout.nbytes / MiB:.0f} MiB on {server.s3.kind}")
    try:
        times = s3.transfer_cases(
            server.storage_options, state, raw, args.repeats, ours=ours is None
        )
    except Exception as exc:  # shown in the table; the other groups still count
        ours, times = _failed("S3 transfers", exc), {}
    return [
        Row("S3", f"{name}{suffix}", tuple(times[name]), layout.nbytes, baseline and f"{baseline}{suffix}")
        if name in times
        else Row("S3", f"{name}{suffix}", skipped=f"n/a ({ours})")
        for name, baseline in s3.TRANSFERS
    ]


def _latest_rows(args: argparse.Namespace, server: Any, ours: str | None) -> list[Row]:
    from . import s3

    if ours:
        return [Row("S3 list", "ours latest_step()", skipped=f"n/a ({ours})")]
    progress(f"latest_step() over {args.s3_archives} archives")
    try:
        found = s3.latest_step_case(server, args.s3_archives, args.repeats)
    except Exception as exc:  # shown in the table; the other groups still count
        return [Row("S3 list", "ours latest_step()", skipped=f"n/a ({_failed('latest_step()', exc)})")]
    rows = []
    for name, result in found.items():
        baseline = None if name == "one plain listing" else "one plain listing"
        note = f"{result['requests']:.0f} requests, {result['archive_reads']:.0f} archive reads"
        rows.append(Row("S3 list", name, tuple(result["times"]), 0, baseline, note=note, extra=result))
    return rows


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "safetensors", "s3fs", "moto"):
        if importlib.util.find_spec(module) is not None:
            from importlib.metadata import version

            versions[module] = version(module)
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    layout = make_layout(args.size_mb * MiB, args.arrays)
    SCRATCH.mkdir(exist_ok=True)
    folder = tempfile.mkdtemp(prefix="run-", dir=SCRATCH)
    started = time.perf_counter()
    try:
        write_raw(make_state(layout), os.path.join(folder, "state.bin"))
        os.sync()  # its write-back must not slow down the first case
        rows = local_rows(args, folder, layout) + s3_rows(args, folder)
        scaled = scaling_results(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    env = environment()
    found = targets(rows, layout.nbytes)
    print(
        f"luigi-checkpoint benchmark: {layout.nbytes / MiB:.0f} MiB float32 in {args.arrays} arrays, "
        f"S3 {args.s3_size_mb} MiB, {args.s3_archives} archives for latest_step(), "
        f"median of {args.repeats}, local disk, hot page cache; {env['cpus']} CPUs, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    )
    print(table(rows, layout.nbytes))
    print("\nissue-6 targets:")
    print(targets_table(found))
    if scaled:
        print(f"\nscaling (median of {args.repeats}, in this process; ours over the fastest installed peer):")
        print(scaling.table(scaled))
    print("\nissue-16 targets:")
    print(targets_table(issue16_targets(rows, scaled)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "config": {k: v for k, v in vars(args).items() if k != "json"},
                    "environment": env,
                    "state_bytes": layout.nbytes,
                    "rows": [row.to_json(ratio(rows, row)) for row in rows],
                    "targets": [t.__dict__ for t in found],
                    "scaling": [result.to_json() for result in scaled],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
