"""Campaign results and the one table ``make soak`` prints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One distinct failure: what went wrong and how to reproduce it."""

    kind: str
    detail: str
    trials: int = 1


@dataclass(frozen=True)
class CampaignResult:
    """The figures of one campaign.

    ``data_lost`` counts trials in which committed data became unreadable,
    wrong or missing; None where the campaign stores no data (fuzzing).
    ``worst_seconds`` is the slowest checked operation of a single trial
    (the restore after a kill, one fuzz input, one save or restore under faults).
    """

    campaign: str
    trials: int
    passed: int
    data_lost: int | None
    worst_seconds: float
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.trials > 0 and self.passed == self.trials and not self.data_lost


class Tally:
    """Accumulates trials of one campaign; findings are grouped by kind."""

    def __init__(self, campaign: str) -> None:
        self.campaign = campaign
        self.trials = 0
        self.passed = 0
        self.data_lost = 0
        self.worst = 0.0
        self.notes: list[str] = []
        self._findings: dict[str, list[str]] = {}

    def time(self, seconds: float) -> None:
        self.worst = max(self.worst, seconds)

    def trial(self, problems: Iterable[str], *, lost: bool = False) -> None:
        """Record one trial; each problem is ``"kind: detail"``."""
        problems = list(problems)
        self.trials += 1
        self.passed += not problems
        self.data_lost += lost
        for problem in problems:
            kind, _, detail = problem.partition(": ")
            self._findings.setdefault(kind, []).append(detail)

    def finding(self, kind: str, detail: str, count: int = 1) -> None:
        """A finding counted outside :meth:`trial` (e.g. reported by a worker)."""
        self._findings.setdefault(kind, []).extend([detail] * count)

    def result(self, *, stores_data: bool = True) -> CampaignResult:
        findings = tuple(
            Finding(kind, details[0], len(details)) for kind, details in sorted(self._findings.items())
        )
        return CampaignResult(
            campaign=self.campaign,
            trials=self.trials,
            passed=self.passed,
            data_lost=self.data_lost if stores_data else None,
            worst_seconds=self.worst,
            findings=findings,
            notes=tuple(self.notes),
        )


COLUMNS = ("campaign", "trials", "passed", "data lost", "worst time")


def table(results: Iterable[CampaignResult]) -> str:
    """A Markdown table, one row per campaign."""
    rows = [
        (
            r.campaign,
            f"{r.trials:,}",
            f"{r.passed:,}",
            "n/a" if r.data_lost is None else str(r.data_lost),
            f"{r.worst_seconds:.2f} s",
        )
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))
        ) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(COLUMNS), rule, *(line(row) for row in rows)])


def findings_text(results: Iterable[CampaignResult]) -> str:
    """Findings and notes of every campaign, for the log after the table."""
    lines = []
    for r in results:
        for f in r.findings:
            lines.append(f"- {r.campaign}: {f.kind} ({f.trials} trial(s)): {f.detail}")
        for note in r.notes:
            lines.append(f"- {r.campaign}: note: {note}")
    return "\n".join(lines)
