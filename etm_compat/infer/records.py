"""The records inference produces: evidence, conflicts, and the ledger that collects them.

:mod:`etm_compat.infer.inference` re-exports :class:`Evidence` and :class:`Conflict`;
the helpers (``infer_family``, ``infer_tokens``) write into one :class:`Ledger` so that every
field's provenance, every disagreement and every finding end up in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from etm_compat.findings import Confidence, Finding, Severity

CONFIDENCE_ORDER: tuple[Confidence, ...] = ("none", "low", "medium", "high")


def jsonable(value: Any) -> Any:
    """``value`` with tuples turned into lists and mappings into dicts (keys as strings)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Evidence:
    """One observation behind one inferred field.

    ``source`` is the relative file name it was read from, ``"registry"`` (or
    ``"registry:<family>"``) for facts from the family registry, ``"override"`` for what the
    caller asked for, or ``"rules"`` for a value fixed by a documented rule (a runner default). ``detail`` says what was seen and what it implies, for people.
    """

    source: str
    field: str
    value: Any
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The evidence as a JSON-ready dict."""
        return {
            "source": self.source,
            "field": self.field,
            "value": jsonable(self.value),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Conflict:
    """Sources that disagree about one field: ``(value, source)`` pairs, first is the one used."""

    field: str
    values: tuple[tuple[Any, str], ...]

    def to_json(self) -> dict[str, Any]:
        """The conflict as a JSON-ready dict."""
        return {
            "field": self.field,
            "values": [{"value": jsonable(v), "source": s} for v, s in self.values],
        }


@dataclass
class Ledger:
    """Mutable collector used while inferring (never returned: results are frozen tuples)."""

    evidence: list[Evidence] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def note(self, source: str, field_name: str, value: Any, detail: str) -> Evidence:
        """Record one piece of evidence and return it."""
        item = Evidence(source, field_name, value, detail)
        self.evidence.append(item)
        return item

    def find(
        self,
        code: str,
        severity: Severity,
        message: str,
        hint: str | None = None,
        paths: Iterable[str] = (),
    ) -> None:
        """Record one finding."""
        self.findings.append(Finding(code, severity, message, hint, tuple(paths)))

    def compare(self, field_name: str, values: Iterable[tuple[Any, str]]) -> Conflict | None:
        """Record a conflict when the ``(value, source)`` pairs hold more than one value.

        Every pair is kept, agreeing ones included, so a report shows which sources agreed as
        well as which did not.
        """
        pairs = tuple(values)
        distinct: list[Any] = []
        for value, _ in pairs:
            if value not in distinct:
                distinct.append(value)
        if len(distinct) < 2:
            return None
        conflict = Conflict(field_name, pairs)
        self.conflicts.append(conflict)
        return conflict


@dataclass(frozen=True)
class Vote:
    """One source's opinion: the families it fits, how much it weighs, the evidence behind it."""

    families: tuple[str, ...]
    weight: int
    strong: bool
    evidence: Evidence


@dataclass(frozen=True)
class FamilyDecision:
    """The family chosen, how sure, the evidence, and the families left unseparated."""

    family_id: str | None
    confidence: Confidence
    evidence: tuple[Evidence, ...]
    alternatives: tuple[str, ...]


def lower_confidence(confidence: Confidence, steps: int = 1) -> Confidence:
    """One level less sure, but never below ``"low"`` (``"none"`` stays ``"none"``)."""
    if confidence == "none":
        return "none"
    index = max(CONFIDENCE_ORDER.index(confidence) - steps, 1)
    return CONFIDENCE_ORDER[index]


def as_int(value: Any) -> int | None:
    """``value`` when it is a plain int (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


#: Most token ids one source may contribute (real ones give 1-3); the rest is ignored.
MAX_IDS_PER_SOURCE = 64


def as_int_list(value: Any) -> list[int] | None:
    """An int, or a list of ints, as a list (at most ``MAX_IDS_PER_SOURCE``); else None."""
    single = as_int(value)
    if single is not None:
        return [single]
    if isinstance(value, list | tuple):
        items = [as_int(v) for v in value[:MAX_IDS_PER_SOURCE]]
        if all(i is not None for i in items):
            return [i for i in items if i is not None]
    return None


def as_number(value: Any) -> float | int | None:
    """An int or a finite float (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    return None


__all__ = [
    "CONFIDENCE_ORDER",
    "MAX_IDS_PER_SOURCE",
    "Conflict",
    "Evidence",
    "FamilyDecision",
    "Ledger",
    "Vote",
    "as_int",
    "as_int_list",
    "as_number",
    "jsonable",
    "lower_confidence",
]
