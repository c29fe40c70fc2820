"""Run the reliability campaigns and print one table: ``python -m tests.soak.run``.

``make soak`` runs the full campaigns (about 20 minutes on two cores);
``--quick`` runs the small variant, ``--only`` some campaigns by name. The S3
server is the one ``LUIGI_CHECKPOINT_S3`` chooses (a ``moto_server`` process
on a free loopback port by default; ``seaweedfs``, or an endpoint URL, see
:mod:`tests.s3server`). Exit status 1 if any campaign had a failing trial.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..s3server import s3_server
from . import big, concurrency, crash, diskfull, faults, fuzz, hostile, luigi_kill
from .env import SoakEnv, create_bucket
from .report import CampaignResult, findings_text, table
from .scale import FULL, QUICK, Scale

Campaign = Callable[[Scale, SoakEnv], CampaignResult]

CAMPAIGNS: dict[str, Campaign] = {
    "crash-local": lambda scale, env: crash.run(scale, env, "local"),
    "crash-s3": lambda scale, env: crash.run(scale, env, "s3"),
    "faults": faults.run,
    "diskfull": diskfull.run,
    "fuzz": fuzz.run,
    "hostile": hostile.run,
    "concurrency-local": lambda scale, env: concurrency.run(scale, env, "local"),
    "concurrency-s3": lambda scale, env: concurrency.run(scale, env, "s3"),
    "luigi": luigi_kill.run,
    "big": big.run,
}


def run_all(scale: Scale, env: SoakEnv, names: list[str]) -> list[CampaignResult]:
    results = []
    for name in names:
        started = time.monotonic()
        print(f"[soak] {name} ...", file=sys.stderr, flush=True)
        result = CAMPAIGNS[name](scale, env)
        print(
            f"[soak] {name}: {result.passed}/{result.trials} passed in {time.monotonic() - started:.0f} s",
            file=sys.stderr, flush=True,
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (the variant of make test)")
    parser.add_argument("--only", nargs="+", choices=sorted(CAMPAIGNS), default=list(CAMPAIGNS))
    parser.add_argument("--workdir", type=Path, help="keep scratch files here (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    scale = QUICK if args.quick else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        with s3_server(log=workdir / "s3server.log") as server:
            env = SoakEnv(workdir, server)
            create_bucket(env)
            results = run_all(scale, env, args.only)
    print(table(results))
    details = findings_text(results)
    if details:
        print("\n" + details)
    print(f"\n{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s in total")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
