"""The records :func:`etm_compat.diagnosis.diagnose_path` returns, and their JSON form.

:class:`DeploymentReport` holds one deployment's (or archive's) findings; :class:`DiagnoseReport`
gathers them under one root, with the summary counts and the versioned JSON report
(etm_compat/schemas/diagnose.schema.json). Both are re-exported from :mod:`etm_compat.diagnosis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from etm_compat.findings import SEVERITY_RANK, Finding, Severity, worst

#: Version of the JSON report (etm_compat/schemas/diagnose.schema.json).
SCHEMA_VERSION: Final = 1
ReportKind = Literal["deployment", "archive", "skipped"]


@dataclass(frozen=True)
class DeploymentReport:
    """The findings about one deployment or archive; ``error`` when it could not be read."""

    name: str
    path: str
    kind: ReportKind
    findings: tuple[Finding, ...]
    error: str | None = None

    @property
    def worst(self) -> Severity | None:
        return worst(self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "worst": self.worst,
            "error": self.error,
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class DiagnoseReport:
    """Every deployment's findings under one root, worst deployment first."""

    root: str
    deployments: tuple[DeploymentReport, ...]
    schema_version: int = SCHEMA_VERSION
    checks_skipped: tuple[str, ...] = field(default=())

    @property
    def findings(self) -> list[Finding]:
        return [f for d in self.deployments for f in d.findings]

    @property
    def summary(self) -> dict[str, Any]:
        """Counts by severity and by code, and how many deployments have each worst level."""
        by_severity: dict[str, int] = {s: 0 for s in SEVERITY_RANK}
        by_code: dict[str, int] = {}
        for f in self.findings:
            by_severity[f.severity] += 1
            by_code[f.code] = by_code.get(f.code, 0) + 1
        return {
            "deployments": len(self.deployments),
            "unreadable": sum(1 for d in self.deployments if d.error is not None),
            "by_severity": by_severity,
            "by_code": dict(sorted(by_code.items(), key=lambda kv: (-kv[1], kv[0]))),
        }

    def at_or_above(self, level: Severity) -> bool:
        """Whether any finding is at ``level`` or worse (for ``--fail-on``)."""
        return any(SEVERITY_RANK[f.severity] <= SEVERITY_RANK[level] for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool": "etm-compat diagnose",
            "root": self.root,
            "summary": self.summary,
            "checks_skipped": list(self.checks_skipped),
            "deployments": [d.to_json() for d in self.deployments],
        }


__all__ = ["SCHEMA_VERSION", "DeploymentReport", "DiagnoseReport", "ReportKind"]
