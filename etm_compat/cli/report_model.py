"""What a report page shows, whichever report it comes from: one :class:`Page` of :class:`Row`\\ s.

The upgrade report (an :class:`~etm_compat.bulk.upgrade.UpgradeResult`, or its JSON form with
``"report": "etm-compat upgrade"``) and the diagnose report (a
:class:`~etm_compat.diagnosis.DiagnoseReport`, or its JSON form) become the same page: cards of
counts, a row per deployment (its outcome or kind, family, findings, archive and source sizes,
and its details, see :func:`etm_compat.diagnosis.view_details`), and the tallies the charts and
summary tables show (:meth:`Page.tally`, :meth:`Page.common_findings`, :meth:`Page.space`).
:mod:`etm_compat.cli.report_md` and :mod:`etm_compat.cli.report_html` render it; nothing here
escapes: the renderers do, each for its medium.

>>> page = page_of(result)  # doctest: +SKIP
>>> page.tally("state")  # doctest: +SKIP
[('written', 3), ('up_to_date', 2)]
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from etm_compat.constants import VERSION
from etm_compat.findings import SEVERITIES

if TYPE_CHECKING:
    from etm_compat.bulk.upgrade import UpgradeResult

UPGRADE_TITLE: Final = "etm-compat upgrade report"
DIAGNOSE_TITLE: Final = "etm-compat diagnose report"
#: The upgrade outcomes, in the order the cards and charts show them.
OUTCOMES: Final = ("written", "up_to_date", "locked", "failed")
#: How many families the family chart names before it groups the rest as "other".
TOP_FAMILIES: Final = 12
UNKNOWN_FAMILY: Final = "(unknown)"


class SupportsToJson(Protocol):
    def to_json(self) -> dict[str, Any]: ...


ReportLike = Mapping[str, Any] | SupportsToJson


def upgrade_json(result: UpgradeResult) -> dict[str, Any]:
    """An upgrade result as the report's JSON, with what the pages need besides: whether it is
    complete (``ok``) and each item's ``source_bytes``."""
    out: dict[str, Any] = {"report": "etm-compat upgrade", "tool_version": VERSION, **result.to_json()}
    out["ok"] = result.ok
    out["items"] = [
        {"source_bytes": item.source_bytes, **entry}
        for item, entry in zip(result.items, out["items"], strict=True)
    ]
    return out


def as_dict(report: ReportLike, *, details: bool = True) -> Mapping[str, Any]:
    """The JSON-ready form of a report object (or the dict itself); a diagnose report's
    deployments carry their details unless ``details=False`` (its JSON report, schema 1)."""
    if isinstance(report, Mapping):
        return report
    # Lazy: ``diagnose`` has loaded this module already, and ``upgrade`` passes its report as
    # a dict (:func:`upgrade_json`): an upgrade never loads the checks and templates here.
    from etm_compat.diagnosis import DiagnoseReport

    if isinstance(report, DiagnoseReport):
        return report.to_json(details=details)
    # Lazy: as above; a diagnose report has returned already, so a diagnose never loads it.
    from etm_compat.bulk.upgrade import UpgradeResult

    if isinstance(report, UpgradeResult):
        return upgrade_json(report)
    return report.to_json()


@dataclass(frozen=True)
class Row:
    """One deployment (or archive, or skipped folder) as every report page shows it.

    ``state`` is the upgrade outcome or the diagnose kind; ``location`` the archive (upgrade,
    relative to the output) or the path read (diagnose); ``reason`` why (or the read error).
    """

    name: str
    state: str
    family: str | None
    findings: tuple[Mapping[str, Any], ...]
    location: str
    reason: str
    size: int | None = None
    source_bytes: int | None = None
    details: Mapping[str, Any] | None = None

    @property
    def worst(self) -> str | None:
        found = self.severities()
        return next((s for s in SEVERITIES if s in found), None)

    def severities(self) -> set[str]:
        return {str(f.get("severity")) for f in self.findings} & set(SEVERITIES)


@dataclass(frozen=True)
class Page:
    """A whole report: its title and header facts, the count cards, the rows."""

    kind: Literal["upgrade", "diagnose"]
    title: str
    root: str
    out: str | None
    ok: bool | None
    cards: tuple[tuple[str, int], ...]
    rows: tuple[Row, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def state_label(self) -> str:
        return "outcome" if self.kind == "upgrade" else "kind"

    @property
    def verdict(self) -> str:
        """One line: the counts (and, for an upgrade, whether every deployment has an archive)."""
        words = [f"{n:,} {label.replace('_', ' ')}" for label, n in self.cards]
        if self.kind == "diagnose":  # deployments, unreadable; then findings by severity
            return f"{', '.join(words[:2])}; findings: {', '.join(words[2:])}"
        counts = ", ".join(words)
        if self.ok is None:
            return counts
        return f"{'OK' if self.ok else 'INCOMPLETE'}: {counts}"

    def tally(self, what: Literal["state", "family", "severity"]) -> list[tuple[str, int]]:
        """Rows by outcome/kind, by family (the largest first, the rest as "other"), or findings
        by severity (every severity, zeros included)."""
        if what == "severity":
            found = Counter(str(f.get("severity")) for r in self.rows for f in r.findings)
            return [(s, found[s]) for s in SEVERITIES]
        if what == "state":
            states = Counter(r.state for r in self.rows)
            order = [s for s in OUTCOMES if s in states] + sorted(set(states) - set(OUTCOMES))
            return [(s, states[s]) for s in order]
        families = Counter(r.family or UNKNOWN_FAMILY for r in self.rows).most_common()
        if len(families) <= TOP_FAMILIES:
            return families
        rest = sum(n for _, n in families[TOP_FAMILIES - 1 :])
        return [*families[: TOP_FAMILIES - 1], (f"other ({len(families) - TOP_FAMILIES + 1})", rest)]

    def common_findings(self, per_severity: int = 8) -> list[tuple[str, str, int, int, str | None]]:
        """The most common findings: ``(severity, code, deployments, findings, a hint)``, the
        codes of each severity that touch the most deployments first."""
        rows: dict[tuple[str, str], set[int]] = {}
        total: Counter[tuple[str, str]] = Counter()
        hints: dict[tuple[str, str], str | None] = {}
        for i, row in enumerate(self.rows):
            for f in row.findings:
                key = (str(f.get("severity")), str(f.get("code")))
                rows.setdefault(key, set()).add(i)
                total[key] += 1
                if hints.get(key) is None and f.get("hint"):
                    hints[key] = str(f["hint"])
        out = []
        for severity in SEVERITIES:
            keys = sorted((k for k in rows if k[0] == severity), key=lambda k: (-len(rows[k]), k[1]))
            out += [(k[0], k[1], len(rows[k]), total[k], hints.get(k)) for k in keys[:per_severity]]
        return out

    def space(self) -> tuple[int, int, int] | None:
        """``(archive bytes, their sources' bytes, deployments counted)`` over the rows that have
        both sizes; None when no row has (a diagnose report)."""
        both = [r for r in self.rows if r.size is not None and r.source_bytes]
        if not both:
            return None
        return sum(r.size or 0 for r in both), sum(r.source_bytes or 0 for r in both), len(both)

    def space_by_family(self) -> list[tuple[str, int, int, int]]:
        """``(family, deployments, archive bytes, source bytes)``, the largest sources first."""
        count: Counter[str] = Counter()
        archives: Counter[str] = Counter()
        sources: Counter[str] = Counter()
        for r in self.rows:
            if r.size is not None and r.source_bytes:
                family = r.family or UNKNOWN_FAMILY
                count[family] += 1
                archives[family] += r.size
                sources[family] += r.source_bytes
        return sorted(
            ((f, count[f], archives[f], sources[f]) for f in count), key=lambda e: (-e[3], e[0])
        )


def _findings(entry: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    return tuple(f for f in entry.get("findings") or [] if isinstance(f, Mapping))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _details(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    details = entry.get("details")
    return details if isinstance(details, Mapping) else None


def _upgrade_page(rep: Mapping[str, Any]) -> Page:
    root, out = str(rep.get("root", "")), rep.get("out")
    base = str(out) if out is not None else root
    rows = []
    for item in rep.get("items") or []:
        archive = str(item.get("archive", ""))
        rows.append(
            Row(
                name=str(item.get("program", "")),
                state=str(item.get("outcome", "")),
                family=item.get("family"),
                findings=_findings(item),
                location=os.path.relpath(archive, base) if archive and base else archive,
                reason=str(item.get("reason", "")),
                size=_int(item.get("size")),
                source_bytes=_int(item.get("source_bytes")),
                details=_details(item),
            )
        )
    counts = rep.get("counts") or {}
    cards = tuple((k, int(counts.get(k, 0))) for k in (*OUTCOMES, "skipped"))
    skipped = tuple((str(s.get("path", "")), str(s.get("reason", ""))) for s in rep.get("skipped") or [])
    relative = tuple((os.path.relpath(p, root) if root and os.path.isabs(p) else p, why) for p, why in skipped)
    ok = rep.get("ok")
    if not isinstance(ok, bool):
        ok = not skipped and not counts.get("failed")
    return Page(
        "upgrade", str(rep.get("title") or UPGRADE_TITLE), root, None if out is None else str(out),
        ok, cards, tuple(rows), relative,
    )


def _diagnose_page(rep: Mapping[str, Any]) -> Page:
    rows = []
    for dep in rep.get("deployments") or []:
        details = _details(dep)
        family = (details or {}).get("family") or {}
        rows.append(
            Row(
                name=str(dep.get("name", "")),
                state=str(dep.get("kind", "")),
                family=family.get("id") if isinstance(family, Mapping) else None,
                findings=_findings(dep),
                location=str(dep.get("path", "")),
                reason=str(dep.get("error") or ""),
                details=details,
            )
        )
    summary = rep.get("summary") or {}
    by_severity = summary.get("by_severity") or {}
    cards = (
        ("deployments", len(rows)),
        ("unreadable", sum(1 for d in rep.get("deployments") or [] if d.get("error"))),
        *((s, int(by_severity.get(s, 0))) for s in SEVERITIES),
    )
    notes = tuple(str(n) for n in rep.get("checks_skipped") or [])
    title = str(rep.get("title") or DIAGNOSE_TITLE)
    return Page("diagnose", title, str(rep.get("root", "")), None, None, cards, tuple(rows), (), notes)


def page_of(report: ReportLike) -> Page:
    """The page of an upgrade or diagnose report (object or JSON form)."""
    rep = as_dict(report)
    if rep.get("report") == "etm-compat upgrade" or "items" in rep:
        return _upgrade_page(rep)
    return _diagnose_page(rep)


def human_bytes(n: int) -> str:
    """``n`` bytes for people: ``1.5 MB`` (powers of 1000, as file managers show them)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def share(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole`` (``-`` when ``whole`` is 0)."""
    return f"{100 * part / whole:.1f}%" if whole else "-"


__all__ = [
    "DIAGNOSE_TITLE",
    "UPGRADE_TITLE",
    "Page",
    "ReportLike",
    "Row",
    "as_dict",
    "human_bytes",
    "page_of",
    "share",
    "upgrade_json",
]
