"""One validation policy for every reader: findings per case, and what to do with them (ignore/warn/raise)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from protocols.errors import DataError

log = logging.getLogger(__name__)


class Policy(StrEnum):
    """What a reader does with a case that has findings."""

    IGNORE = "ignore"
    WARN = "warn"
    RAISE = "raise"


class Severity(StrEnum):
    """ERROR makes a case unusable; WARNING is suspicious but usable; NOTE is normal but worth reporting."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Finding:
    """One problem with one case, with the file it concerns and how to fix it."""

    severity: Severity
    code: str
    message: str
    path: Path | None = None
    fix: str = ""

    def __str__(self) -> str:
        """The finding without its severity, so an exception built from findings reads "error: CODE: ..." once, in
        the CLI's words; lists of findings of mixed severity use :meth:`labelled`.
        """
        where = f" [{self.path}]" if self.path else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.code}: {self.message}{where}.{fix}"

    def labelled(self) -> str:
        """The finding with its severity first, for a list of findings (a report, a log)."""
        return f"{self.severity}: {self}"


@dataclass
class CaseReport:
    """Everything found while reading one case, or (``of_patient`` False) about files that belong to no case."""

    patient_id: str
    path: Path | None
    findings: list[Finding] = field(default_factory=list)
    of_patient: bool = True

    def add(self, severity: Severity, code: str, message: str, path: Path | None = None, fix: str = "") -> None:
        self.findings.append(Finding(severity, code, message, path, fix))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.WARNING]

    @property
    def usable(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"patient": self.patient_id, "path": str(self.path or ""), "status": self.status,
                "findings": [{"severity": f.severity.value, "code": f.code, "message": f.message,
                              "path": str(f.path or ""), "fix": f.fix} for f in self.findings]}

    @property
    def status(self) -> str:
        return "error" if self.errors else "warning" if self.warnings else "ok"


class DataValidationError(DataError):
    """Raised under ``Policy.RAISE``: the message lists every error and warning with its file and fix."""

    def __init__(self, report: CaseReport):
        self.report = report
        lines = [f"patient {report.patient_id} ({report.path}) failed validation:"]
        lines += [f"  {f.labelled()}" for f in report.findings if f.severity != Severity.NOTE]
        super().__init__("\n".join(lines))


def apply_policy(report: CaseReport, policy: Policy | str) -> None:
    """Act on a report: raise on errors or warnings, log them, or stay silent, as the policy says."""
    policy = Policy(policy)
    serious = [f for f in report.findings if f.severity != Severity.NOTE]
    if not serious or policy == Policy.IGNORE:
        return
    if policy == Policy.RAISE:
        raise DataValidationError(report)
    for finding in serious:
        log.warning("patient %s: %s", report.patient_id, finding.labelled())


def format_reports(reports: list[CaseReport]) -> str:
    """One line per patient, then its findings indented; the files of no patient after them; a summary line that
    counts patients only.
    """
    patients = [r for r in reports if r.of_patient]
    others = [r for r in reports if not r.of_patient]
    lines = []
    for report in patients + others:
        notes = [f.message for f in report.findings if f.severity == Severity.NOTE]
        lines.append(f"{report.patient_id:<12} {report.status:<8} {report.path}")
        lines += [f"    {f.labelled()}" for f in report.findings if f.severity != Severity.NOTE]
        if notes:
            lines.append(f"    note: {'; '.join(notes)}")
    counts = {s: sum(r.status == s for r in patients) for s in ("ok", "warning", "error")}
    summary = (f"{len(patients)} patients: {counts['ok']} ok, {counts['warning']} with warnings, "
               f"{counts['error']} unusable")
    lines.append(summary + "".join(f"; {r.patient_id}: {len(r.findings)} files" for r in others))
    return "\n".join(lines)


def print_reports(reports: list[CaseReport], as_json: bool = False) -> int:
    """Print reports (table or JSON) for a command; the exit code is 1 when any case is unusable."""
    print(json.dumps([r.to_dict() for r in reports], indent=2) if as_json else format_reports(reports))
    return 1 if any(not r.usable for r in reports) else 0
