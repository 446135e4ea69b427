"""The one record every check produces (a finding), and the severity and confidence scales."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
#: How sure inference is of a value: a scale shared by inference, findings and metadata.json.
Confidence = Literal["high", "medium", "low", "none"]
CONFIDENCES: tuple[Confidence, ...] = ("high", "medium", "low", "none")
SEVERITY_RANK: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One problem or observation about a deployment or archive.

    ``code`` is stable across releases (documented in docs/DIAGNOSTICS.md); ``message`` says what
    was found and what was expected; ``hint`` says how to fix it.
    """

    code: str
    severity: Severity
    message: str
    hint: str | None = None
    paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "paths": list(self.paths),
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Finding:
        severity = obj.get("severity")
        if severity not in SEVERITY_RANK:
            severity = "info"
        paths = obj.get("paths")
        hint = obj.get("hint")
        return cls(
            code=str(obj.get("code", "")),
            severity=severity,  # type: ignore[arg-type]
            message=str(obj.get("message", "")),
            hint=str(hint) if hint is not None else None,
            paths=tuple(str(p) for p in paths) if isinstance(paths, list) else (),
        )


def worst(findings: Iterable[Finding]) -> Severity | None:
    """The most severe level among findings, or None when there are none."""
    ranks = [SEVERITY_RANK[f.severity] for f in findings]
    if not ranks:
        return None
    best = min(ranks)
    return next(s for s, r in SEVERITY_RANK.items() if r == best)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by code, for stable reports."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], f.code, f.paths))
