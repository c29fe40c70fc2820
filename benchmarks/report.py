"""Results: one row per measured case, the table on stdout, the issue-6 targets."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .state import MiB


@dataclass(frozen=True)
class Row:
    """One case's result; ``baseline`` names the row of the same group it is compared to."""

    group: str
    name: str
    times: tuple[float, ...] = ()
    nbytes: int = 0
    baseline: str | None = None
    peak_extra_bytes: int | None = None
    note: str = ""
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def to_json(self, ratio: float | None) -> dict[str, Any]:
        return {**asdict(self), "median_s": self.median, "ratio_to_baseline": ratio}


def ratio(rows: list[Row], row: Row) -> float | None:
    """``row``'s median time over its baseline's (1.0 for a baseline itself)."""
    if row.baseline is None and not any(r.baseline == row.name for r in rows):
        return None
    base = find(rows, row.group, row.baseline or row.name)
    if base is None or base.median is None or row.median is None or base.median == 0:
        return None
    return row.median / base.median


def find(rows: list[Row], group: str, name: str) -> Row | None:
    for row in rows:
        if row.group == group and row.name == name:
            return row
    return None


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def _memory(row: Row, state_bytes: int) -> str:
    if row.peak_extra_bytes is None:
        return ""
    mib = row.peak_extra_bytes / MiB
    return f"{mib:.0f} MiB ({row.peak_extra_bytes / state_bytes:.0%})"


def table(rows: list[Row], state_bytes: int) -> str:
    """The results as a fixed-width text table, one line per row."""
    header = ("group", "case", "median", "MB/s", "vs baseline", "peak extra RSS", "note")
    lines = [header]
    for row in rows:
        if row.skipped:
            lines.append((row.group, row.name, "n/a", "", "", "", row.skipped))
            continue
        median, r = row.median, ratio(rows, row)
        speed = f"{row.nbytes / median / 1e6:.0f}" if row.nbytes and median else ""
        against = f"{r:.2f}x {row.baseline or ''}".strip() if r is not None else ""
        memory = _memory(row, state_bytes)
        lines.append((row.group, row.name, _time(median), speed, against, memory, row.note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


@dataclass(frozen=True)
class Target:
    """One issue-6 target: the measured value, the limit, and whether it is met."""

    target: str
    value: str
    limit: str
    met: bool | None  # None: not measured in this run


def check_target(name: str, value: float | None, limit: float, fmt: str, *, lower: bool = True) -> Target:
    """The target ``name``: ``value`` at most ``limit`` (at least, with ``lower=False``)."""
    if value is None:
        return Target(name, "n/a", fmt.format(limit), None)
    met = value <= limit if lower else value >= limit
    return Target(name, fmt.format(value), fmt.format(limit), met)


def _ratio_of(rows: list[Row], group: str, name: str, other: str) -> float | None:
    a, b = find(rows, group, name), find(rows, group, other)
    if a is None or b is None or a.median is None or b.median is None:
        return None
    return a.median / b.median


def _peak(rows: list[Row], group: str, name: str) -> int | None:
    row = find(rows, group, name)
    return None if row is None else row.peak_extra_bytes


def targets(rows: list[Row], state_bytes: int) -> list[Target]:
    """Every issue-6 target evaluated on this run's rows."""
    save_peak, load_peak = _peak(rows, "save", "ours (stored)"), _peak(rows, "load", "ours")
    opened = find(rows, "open", "ours mmap=True")
    latest = find(rows, "S3 list", "ours latest_step()")
    x = "{:.2f}x"
    put = _ratio_of(rows, "S3", "s3fs put_file", "ours save")
    cat = _ratio_of(rows, "S3", "s3fs cat_file", "ours restore")
    return [
        check_target("save vs raw os.write", _ratio_of(rows, "save", "ours (stored)", "raw os.write"), 1.15, x),
        check_target("save vs torch.save", _ratio_of(rows, "save", "ours (stored)", "torch.save"), 1.0, x),
        check_target("save vs np.savez", _ratio_of(rows, "save", "ours (stored)", "np.savez"), 1.0, x),
        check_target(
            "save+fsync vs raw+fsync",
            _ratio_of(rows, "save", "ours (stored) + fsync", "raw os.write + fsync"),
            1.1,
            x,
        ),
        check_target("load vs raw readinto", _ratio_of(rows, "load", "ours", "raw readinto np.empty"), 1.2, x),
        check_target(
            "np.load time / our load time",
            _ratio_of(rows, "load", "np.load of our archive", "ours"),
            3.0,
            x,
            lower=False,
        ),
        check_target("mmap open (ms)", opened.median * 1000 if opened and opened.median else None, 20, "{:.1f}"),
        check_target(
            "save peak extra (MiB)",
            None if save_peak is None else save_peak / MiB,
            0.05 * state_bytes / MiB + 64,
            "{:.0f}",
        ),
        check_target("load peak / state", None if load_peak is None else load_peak / state_bytes, 1.1, x),
        check_target(
            "async stall vs np.copyto",
            _ratio_of(rows, "async", "ours save(block=False)", "np.copyto into preallocated buffers"),
            1.5,
            x,
        ),
        check_target("S3 save throughput vs put_file", put, 0.9, x, lower=False),
        check_target("S3 restore throughput vs cat_file", cat, 0.9, x, lower=False),
        check_target(
            "latest_step() vs one listing",
            _ratio_of(rows, "S3 list", "ours latest_step()", "one plain listing"),
            1.5,
            x,
        ),
        check_target(
            "latest_step() archive reads",
            latest.extra.get("archive_reads") if latest and latest.times else None,
            4,
            "{:.0f}",
        ),
    ]


def targets_table(found: list[Target]) -> str:
    mark = {True: "met", False: "MISSED", None: "n/a"}
    width = max(len(t.target) for t in found)
    return "\n".join(
        f"{t.target.ljust(width)}  {t.value:>8} (limit {t.limit:>6})  {mark[t.met]}" for t in found
    )
