"""The ``ckpt`` command: find runs, follow their metrics, list, inspect, verify,
audit, export and prune checkpoints.

Every path may be a URL (``s3://bucket/run``, ``memory://...``). Options for the
fsspec filesystem are given as repeated ``--storage-option KEY=VALUE``; values
are parsed as JSON when they can be (``anon=true``, ``default_block_size=1048576``)
and dotted keys build nested dicts
(``client_kwargs.endpoint_url=http://127.0.0.1:9000``); quote a string that
looks like a number as JSON (``secret='"0123"'``). s3fs also reads the usual
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL`` environment variables.

Exit status: 0 success, 1 error or bad archives found (``verify``) or untrusted
globals found (``audit``), 2 usage error. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, NoReturn

from fsspec.implementations.local import LocalFileSystem

from . import _manifest, archive, plot, terminal
from .checkpoints import CheckpointStore, step_of
from .errors import ArchiveError, CheckpointError, CheckpointNotFoundError, ObjectExistsError
from .fs import Location, is_temp_name, resolve
from .history import History
from .runs import RunInfo, differing_parameters, list_runs
from .snapshot import load_snapshot, read_snapshot_manifest, snapshot_from_archive


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Failed(Exception):
    """A check found problems: the report is printed, the exit status is 1."""


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _storage_option(text: str) -> tuple[list[str], Any]:
    key, raw = _pair(text)
    if "" in key.split("."):
        raise argparse.ArgumentTypeError(f"empty part in dotted key {key!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _options(pairs: Sequence[tuple[list[str], Any]]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for keys, value in pairs:
        node = options
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--storage-option {'.'.join(keys)}: {key} is not a dict")
        node[keys[-1]] = value
    return options


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells
    )


def _size(n: int) -> str:
    power = min((n.bit_length() - 1) // 10, 4) if n else 0
    unit = ("B", "KiB", "MiB", "GiB", "TiB")[power]
    return f"{n} B" if power == 0 else f"{n / 1024**power:.1f} {unit}"


def _when(created: datetime | str | None) -> tuple[str, str]:
    """``(UTC time, age)`` for display."""
    if created is None:
        return "-", "-"
    moment = _manifest.parse_time(created)
    seconds = max(0, int((datetime.now(timezone.utc) - moment).total_seconds()))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return moment.strftime("%Y-%m-%d %H:%M:%S"), f"{seconds // span}{unit}"
    return moment.strftime("%Y-%m-%d %H:%M:%S"), f"{seconds}s"


def _summary(metadata: Mapping[str, Any], width: int = 48) -> str:
    """Scalar metadata as ``key=value``, training ``metrics`` first (the step
    is shown in its own column)."""
    metrics = metadata.get("metrics")
    items = [*(metrics.items() if isinstance(metrics, Mapping) else ()), *metadata.items()]
    parts = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in items
        if k != "step" and isinstance(v, (str, int, float, bool))
    ]
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=_jsonable) if args.json else text)


def _is_file(location: Location) -> bool:
    location.fs.invalidate_cache(location.path)
    return location.fs.isfile(location.path)


def _existing(location: Location, text: str) -> Location:
    """``location``, or the one error every command gives for a missing path."""
    location.fs.invalidate_cache()
    if not location.fs.exists(location.path):
        raise CheckpointNotFoundError(f"{text}: no such file or folder")
    return location


def _file(location: Location, text: str, command: str) -> Location:
    """``location`` unless it is a folder; an error saying what to do with a folder."""
    _existing(location, text)
    if location.fs.isdir(location.path):
        raise CheckpointError(
            f"{text} is a folder: ckpt {command} takes one archive or snapshot file "
            f"(ckpt ls {text} lists a run's checkpoints)"
        )
    return location


def _folder(location: Location, text: str, command: str) -> Location:
    """``location`` if it is a folder; an error saying what to do with a file."""
    if _is_file(_existing(location, text)):
        raise CheckpointError(
            f"{text} is a file: ckpt {command} takes a run folder (ckpt inspect {text} shows one archive)"
        )
    return location


def _no_checkpoints(location: Location, text: str) -> CheckpointNotFoundError:
    """The error for a folder without checkpoints, pointing at runs below it."""
    runs = list_runs(location)
    if runs:
        return CheckpointNotFoundError(
            f"{text}: no checkpoints in this folder, but {len(runs)} run(s) below it: "
            f"ckpt runs {text} lists them"
        )
    return CheckpointNotFoundError(f"{text}: no checkpoints (no step-*.zip files in this folder)")


def _is_snapshot(location: Location) -> bool:
    try:
        read_snapshot_manifest(location)
    except ArchiveError:
        return False
    return True


def cmd_ls(args: argparse.Namespace) -> None:
    store = CheckpointStore(_folder(resolve(args.root, args.storage_options), args.root, "ls"))
    rows, data = [], []
    for step in store.steps():
        try:
            info = store.info(step)
        except ArchiveError as exc:
            rows.append([step, "-", "-", "-", f"DAMAGED: {exc}"])
            data.append({"step": step, "ok": False, "url": store.url_of(step),
                         "problems": [str(exc)]})
            continue
        created, age = _when(info.created)
        rows.append([step, _size(info.size), created, age, _summary(info.metadata)])
        data.append({"step": step, "ok": True, "url": info.url, "problems": [],
                     "size": info.size, "created": info.created, "metadata": info.metadata})
    if not rows:
        raise _no_checkpoints(store.root, args.root)
    _emit(args, data, _table(["STEP", "SIZE", "CREATED (UTC)", "AGE", "METADATA"], rows))


def cmd_inspect(args: argparse.Namespace) -> None:
    location = _file(resolve(args.path, args.storage_options), args.path, "inspect")
    snapshot = _is_snapshot(location)
    manifest = (read_snapshot_manifest if snapshot else archive.read_manifest)(location)
    created, age = _when(manifest.get("created"))
    fields = [
        ("snapshot" if snapshot else "archive", location.url),
        ("format", f"{manifest['format']} v{manifest['format_version']}"),
        ("size", _size(location.fs.size(location.path))),
        ("created", f"{created} UTC ({age} ago)"),
    ]
    if snapshot and manifest.get("source"):
        source = manifest["source"]
        fields.append(("source", f"{source['url']} (step {source['step']})"))
    if not snapshot:
        fields.append(("pickle", f"protocol {manifest.get('pickle_protocol')}, "
                                 f"{manifest.get('compression')}"))
    fields.append(("metadata", json.dumps(manifest.get("metadata", {}), sort_keys=True)))
    lines = [f"{label:<10}{value}" for label, value in fields]
    arrays = manifest["arrays"]
    rows = [[a["name"], _dtype(a), tuple(a["shape"]), _size(a["nbytes"])] for a in arrays]
    total = sum(a["nbytes"] for a in arrays)
    lines += ["", _table(["NAME", "DTYPE", "SHAPE", "SIZE"], rows),
              f"{len(arrays)} arrays, {_size(total)}"]
    _emit(args, manifest, "\n".join(lines))


def _dtype(entry: Mapping[str, Any]) -> str:
    """An array's dtype as its framework names it (``torch.bfloat16 (<u2)``)."""
    if "framework" not in entry:
        return entry["dtype"]
    what = entry.get("framework_dtype") or entry.get("type")
    return f"{entry['framework']}.{what} ({entry['dtype']})"


@contextmanager
def _with_bar(handle: archive.Archive, location: Location, label: str) -> Iterator[archive.Archive]:
    """``handle``, or, for a big archive when stderr is a terminal, the same
    archive opened through a file that draws a bar as it is read."""
    if not terminal.is_terminal() or handle.size < terminal.BIG:
        yield handle
        return
    reading = terminal.ReadingBar(location.fs.open(location.path, "rb"), location.url, handle.size, label)
    with reading, archive.open_archive(reading) as shown:
        yield shown


def _verify_file(location: Location) -> list[str]:
    if _is_snapshot(location):
        try:
            load_snapshot(location)
        except ArchiveError as exc:
            return [str(exc)]
        return []
    try:
        with archive.open_archive(location) as handle, _with_bar(handle, location, "verifying") as shown:
            return shown.verify()
    except ArchiveError as exc:
        return [str(exc)]


def _zip_files_below(folder: Location) -> list[Location]:
    """The ``.zip`` files in and below ``folder`` (snapshots, archives), temp files left out."""
    found = folder.fs.find(folder.path)
    return [Location(folder.fs, p, folder.transfer) for p in sorted(found)
            if p.endswith(".zip") and not is_temp_name(p.rpartition("/")[2])]


def cmd_verify(args: argparse.Namespace) -> None:
    location = _existing(resolve(args.path, args.storage_options), args.path)
    if _is_file(location):
        files = [location]
    else:
        store = CheckpointStore(location)
        files = [store.location_of(step) for step in store.steps()] or _zip_files_below(location)
    reports = [{"step": step_of(f.name), "url": f.url, "problems": _verify_file(f)} for f in files]
    if not reports:
        raise CheckpointNotFoundError(
            f"{args.path}: no checkpoints or snapshots to verify (no .zip files in or below this folder)"
        )
    for report in reports:
        report["ok"] = not report["problems"]
    bad = [r for r in reports if not r["ok"]]
    lines = [f"{'ok ' if r['ok'] else 'BAD'}  {r['url']}" for r in reports]
    lines += [f"  {problem}" for r in bad for problem in r["problems"]]
    lines.append(f"{len(reports)} checked, {len(bad)} bad")
    _emit(args, reports, "\n".join(lines))
    if bad:
        raise _Failed


def cmd_audit(args: argparse.Namespace) -> None:
    location = _file(resolve(args.archive, args.storage_options), args.archive, "audit")
    result = archive.audit(location, trusted=args.trust, renames=dict(args.rename) or None)
    for name in args.trust:
        if not any(g == name or g.startswith(f"{name}.") for g in result.globals):
            logging.warning("--trust %s matches no global of %s (a typo?)", name, args.archive)
    rows = [[name, "UNTRUSTED" if name in result.untrusted else "trusted"]
            for name in result.globals]
    summary = f"{len(result.globals)} globals, {len(result.untrusted)} untrusted"
    if result.untrusted:
        summary += " (to load, pass trusted=[...]; here, --trust NAME)"
    _emit(args, {"globals": list(result.globals), "untrusted": list(result.untrusted)},
          f"{_table(['GLOBAL', 'STATUS'], rows)}\n{summary}")
    if result.untrusted:
        raise _Failed


def _check_destination(dest: Location, text: str, *, force: bool, parents: bool) -> None:
    """Refuse a folder, an existing file without ``force`` and a missing local
    parent folder without ``parents``."""
    fs = dest.fs
    fs.invalidate_cache()
    if fs.isdir(dest.path):
        raise CheckpointError(f"{text} is a folder: give the snapshot's file name, e.g. {text.rstrip('/')}/snapshot.zip")
    if fs.exists(dest.path) and not force:
        raise ObjectExistsError(f"{text} exists: pass --force to overwrite it")
    parent = os.path.dirname(dest.path)
    if isinstance(fs, LocalFileSystem) and not os.path.isdir(parent) and not parents:
        raise CheckpointNotFoundError(f"{text}: folder {parent} does not exist; pass --parents to create it")


def cmd_export(args: argparse.Namespace) -> None:
    source = _existing(resolve(args.source, args.storage_options), args.source)
    dest = resolve(args.dest, args.storage_options)
    _check_destination(dest, args.dest, force=args.force, parents=args.parents)
    if _is_file(source):
        if args.step is not None:
            raise CheckpointError("--step needs a checkpoint folder, not an archive")
        with archive.open_archive(source) as handle, _with_bar(handle, source, "exporting") as shown:
            manifest = snapshot_from_archive(shown, dest, args.select, step=step_of(source.name))
    else:
        store = CheckpointStore(source)
        with store.open(args.step) as (step, handle), \
                _with_bar(handle, store.location_of(step), "exporting") as shown:
            manifest = snapshot_from_archive(shown, dest, args.select, step=step)
    total = sum(a["nbytes"] for a in manifest["arrays"])
    _emit(args, manifest, f"wrote {args.dest}: {len(manifest['arrays'])} arrays, "
          f"{_size(total)}, from {manifest['source']['url']}")


def cmd_prune(args: argparse.Namespace) -> None:
    if args.keep_last is None and args.keep_best is None:
        raise CheckpointError("prune needs --keep-last N, --keep-best N --monitor METRIC, or both")
    location = _folder(resolve(args.root, args.storage_options), args.root, "prune")
    store = CheckpointStore(location, keep_last=args.keep_last, keep_every=args.keep_every,
                            keep_best=args.keep_best, monitor=args.monitor, mode=args.mode)
    if not store.steps():
        raise _no_checkpoints(location, args.root)
    removed = store.prune(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    kept, damaged = [], []
    for step in (s for s in store.steps() if s not in removed):
        try:
            store.info(step)
        except ArchiveError:
            damaged.append(step)
        else:
            kept.append(step)
    lines = [f"{verb} step {step}" for step in removed]
    lines.append(f"{verb} {len(removed)}, kept {len(kept)}: {', '.join(map(str, kept))}")
    if damaged:
        lines.append(f"damaged, left for ckpt verify: {', '.join(map(str, damaged))}")
    _emit(args, {"removed": removed, "kept": kept, "damaged": damaged, "dry_run": args.dry_run},
          "\n".join(lines))


def _metrics_text(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items()) or "-"


def cmd_runs(args: argparse.Namespace) -> None:
    runs = list_runs(_existing(resolve(args.root, args.storage_options), args.root))
    if not runs:
        raise CheckpointNotFoundError(f"{args.root}: no runs (no run.json in or below this folder)")
    varying = [n for n in differing_parameters(runs) if n != "total_steps"]  # STEP shows it
    rows = [[f"{r.family}/{r.run_id}", *(r.parameters.get(n, "-") for n in varying),
             f"{'-' if r.latest_step is None else r.latest_step}/{r.total_steps}", r.state,
             _when(r.last_activity)[1], _metrics_text(r.metrics)] for r in runs]
    lines = [_table(["RUN", *(n.upper() for n in varying), "STEP", "STATE", "AGE", "METRICS"], rows)]
    common = {n: v for n, v in runs[0].parameters.items() if n not in varying}
    if common:
        lines.append("same in all: " + " ".join(f"{n}={v}" for n, v in common.items()))
    _emit(args, [asdict(r) for r in runs], "\n".join(lines))


def _history(args: argparse.Namespace) -> tuple[CheckpointStore, History]:
    store = CheckpointStore(_folder(resolve(args.run, args.storage_options), args.run, args.command))
    history = store.history()
    if not history.steps:
        raise CheckpointNotFoundError(
            f"{args.run}: no metric history (a TrainingTask writes history/ in its run folder)"
        )
    return store, history


def cmd_history(args: argparse.Namespace) -> None:
    _, history = _history(args)
    names = args.metric or history.names()
    rows = [[step, *(f"{m[n]:.6g}" if n in m else "-" for n in names)]
            for step, m in zip(history.steps, history.metrics)]
    data = [{"step": step, "metrics": dict(m)} for step, m in zip(history.steps, history.metrics)]
    _emit(args, data, _table(["STEP", *names], rows))


def cmd_plot(args: argparse.Namespace) -> None:
    store, history = _history(args)
    steps, values = history.series(args.metric)
    if not steps:
        raise CheckpointNotFoundError(
            f"{args.run}: no metric {args.metric!r} in the history (it has: {', '.join(history.names())})"
        )
    if args.output is None:
        print(f"{args.metric}  steps {steps[0]}..{steps[-1]}  min {min(values):.4g}  "
              f"max {max(values):.4g}  last {values[-1]:.4g}")
        print(plot.sparkline(values, width=args.width))
        return
    dest = resolve(args.output, args.storage_options)
    _check_destination(dest, args.output, force=True, parents=False)
    plot.plot_png(steps, values, dest, metric=args.metric, title=store.root_url)
    print(f"wrote {args.output}: {args.metric} over {len(steps)} steps, "
          f"{plot.PNG_SIZE[0]}x{plot.PNG_SIZE[1]} PNG")


def _common(*, short_storage_option: bool = True) -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    flags = ("--storage-option", "-o") if short_storage_option else ("--storage-option",)
    common.add_argument(*flags, metavar="KEY=VALUE", dest="storage_options",
                        type=_storage_option, action="append", default=[],
                        help="fsspec storage option (repeatable; JSON values, dotted keys)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="ckpt", description=__doc__.replace("``", ""),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str, parent: argparse.ArgumentParser = common
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[parent], help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("runs", cmd_runs, "list the runs under a root: parameters, step, state, metrics"
        ).add_argument("root", metavar="ROOT", help="checkpoint root, task family or run folder")
    p = add("history", cmd_history, "show every step's metrics of a run (kept through pruning)")
    p.add_argument("run", metavar="RUN", help="run folder (path or URL)")
    p.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable)")
    p = add("plot", cmd_plot, "plot a metric of a run: a PNG with -o (matplotlib), else a sparkline",
            _common(short_storage_option=False))
    p.add_argument("run", metavar="RUN", help="run folder (path or URL)")
    p.add_argument("--metric", required=True, metavar="NAME", help="metric to plot, e.g. loss")
    p.add_argument("-o", "--output", metavar="PNG", help="write a PNG here (needs the plot extra)")
    p.add_argument("--width", type=_positive, default=60, metavar="N", help="sparkline width")
    add("ls", cmd_ls, "list the checkpoints of a run folder").add_argument(
        "root", metavar="ROOT", help="run folder (path or URL)")
    add("inspect", cmd_inspect, "show an archive's or snapshot's manifest and arrays"
        ).add_argument("path", metavar="ARCHIVE_OR_SNAPSHOT")
    add("verify", cmd_verify, "check every CRC and NPY header of a folder or file"
        ).add_argument("path", metavar="ROOT_OR_ARCHIVE")
    p = add("audit", cmd_audit, "list the globals a checkpoint's pickle would import")
    p.add_argument("archive", metavar="ARCHIVE")
    p.add_argument("--trust", action="append", default=[], metavar="NAME",
                   help="dotted name to trust (repeatable)")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", type=_pair,
                   help="rename a module or class before checking (repeatable)")
    p = add("export", cmd_export, "write a numpy-only snapshot of an archive or a run's latest step")
    p.add_argument("source", metavar="ARCHIVE_OR_ROOT")
    p.add_argument("dest", metavar="DEST", help="snapshot file to write (path or URL)")
    p.add_argument("--select", nargs="+", metavar="PATTERN", help="array names or globs")
    p.add_argument("--step", type=int, help="step to export from a run folder")
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    p.add_argument("--parents", action="store_true", help="create DEST's missing folders")
    p = add("prune", cmd_prune, "delete old checkpoints by a retention policy")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--keep-last", type=_positive, metavar="N", help="keep the newest N")
    p.add_argument("--keep-every", type=_positive, metavar="K", help="also keep every step divisible by K")
    p.add_argument("--keep-best", type=_positive, metavar="N", help="also keep the N best by --monitor")
    p.add_argument("--monitor", metavar="METRIC", help="metric that ranks checkpoints (e.g. loss)")
    p.add_argument("--mode", choices=("min", "max"), default="min", help="min: lowest is best")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    return parser


def _misspelled_option(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """A usage error for the first ``--option`` no command knows, with the
    closest known one (argparse would first complain about a missing required one)."""
    known = {option for p in [parser, *_subparsers(parser)] for a in p._actions for option in a.option_strings}
    for token in argv:
        if token == "--":
            return None
        name = token.partition("=")[0]
        if name.startswith("--") and not any(k.startswith(name) for k in known):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            return f"unknown option {name}" + (f"; did you mean {close[0]}?" if close else "")
    return None


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [choice for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for choice in action.choices.values()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ckpt``; returns the exit status."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    misspelled = _misspelled_option(parser, argv)
    if misspelled:
        parser.error(misspelled)
    args = parser.parse_args(argv)
    try:
        args.storage_options = _options(args.storage_options)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(format="ckpt: warning: %(message)s", level=logging.WARNING)
    try:
        args.func(args)
    except _Failed:
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output is gone (``ckpt ls | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(f"ckpt: error: {' '.join(_describe(exc).split())}", file=sys.stderr)
        return 1
    return 0


def _describe(exc: Exception) -> str:
    """One line for an error; unexpected kinds keep their type name."""
    if isinstance(exc, CheckpointError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename or exc}"
    if isinstance(exc, (OSError, ValueError, ImportError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
