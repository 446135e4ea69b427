"""``verify``: is an archive whole, and does it still say the truth about its program?

Structure and hashes always (the integrity check ``diagnose`` runs too); with ``runtime=True``
the program is loaded in the real ExecuTorch runtime (straight from the archive bytes), its
constant methods are compared with the metadata snapshot, and the tokenizer is loaded through
pytorch_tokenizers as the on-device runner would. Both run in the isolation worker
(:mod:`etm_compat.isolation`): a program that crashes the runtime, hangs it or exhausts its
memory is the finding ``program-crashes-runtime``, not the end of ``verify``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from etm_compat import isolation
from etm_compat.archive.layout import ProgramRecord
from etm_compat.archive.metadata import tokenizer_member
from etm_compat.archive.read import EtmArchive, open_archive
from etm_compat.checks.archive import (
    integrity_findings,
    read_archived_tokenizer,
    same_value,
    snapshot_findings,
)
from etm_compat.checks.subject import Subject
from etm_compat.checks.tokens import check_runner_tokenizer
from etm_compat.constants import MAIN_PROGRAM_NAME, MEMBER_PROGRAM, MEMBER_TOKENIZER_CONFIG
from etm_compat.errors import RuntimeUnavailableError
from etm_compat.findings import Finding, sort_findings


@dataclass(frozen=True)
class VerifyResult:
    """The one result of verifying an archive: every finding, worst first; ``ok`` if no error."""

    path: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "findings": [f.to_json() for f in self.findings]}


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    return [value]


#: How fast a program is assumed to load at worst, for its time limit (on top of the default).
_LOAD_BYTES_PER_SECOND = 20 << 20


def _run_isolated(archive: EtmArchive, record: ProgramRecord, methods: list[str]) -> isolation.Outcome:
    """The ``program.constants`` task (``etm_compat.isolation_worker``) for one program, with
    limits that grow with its size (the runtime holds a copy of the program and of its data).

    Its value: ``{"methods": {name: {"value": outputs} | {"error": text}}}``, or
    ``{"runtime_error", "hint", "path"}`` when the runtime is missing or refuses the program.
    """
    size = sum(archive.members[m].size for m in (record.member, *record.data) if m in archive.members)
    args = {"archive": os.fspath(archive.path), "program": record.name, "methods": methods}
    return isolation.run_task(
        "program.constants",
        args,
        timeout=isolation.default_timeout() + size / _LOAD_BYTES_PER_SECOND,
        memory_limit=isolation.default_memory_limit() + 3 * size,
    )


def _program_findings(archive: EtmArchive, record: ProgramRecord) -> list[Finding]:
    """Load one program with its data from the archive bytes (in the isolation worker), run every
    recorded constant method and compare it with the snapshot."""
    name = str(archive.path) if record.name == MAIN_PROGRAM_NAME else f"{archive.path}!{record.member}"
    snapshot = (record.snapshot or {}).get("constant_methods") or {}
    outcome = _run_isolated(archive, record, list(snapshot))
    if outcome.status in ("crashed", "timeout", "memory"):
        log = f" (log: {outcome.log_line()})" if outcome.log.strip() else ""
        return [
            Finding(
                "program-crashes-runtime",
                "error",
                f"the ExecuTorch runtime {outcome.describe()} loading {record.member} or running "
                f"its constant methods{log}",
                hint="the program is damaged or not made for this ExecuTorch release; the on-device "
                "runtime refuses or crashes on it too: re-export it with the release that will run it",
                paths=(name,),
            )
        ]
    value = outcome.value if outcome.ok and isinstance(outcome.value, dict) else {}
    if "runtime_error" in value:
        hint, where = value.get("hint"), value.get("path")
        raise RuntimeUnavailableError(
            str(value["runtime_error"]),
            path=str(where) if where is not None else None,
            hint=str(hint) if hint is not None else None,
        )
    methods = value.get("methods")
    if not isinstance(methods, dict):
        why = outcome.describe() if not outcome.ok else "the worker's reply is malformed"
        return [Finding("runtime-method-failed", "error", f"the program could not be run: {why}", paths=(name,))]
    findings: list[Finding] = []
    for method, expected in snapshot.items():
        result = methods.get(method)
        if not isinstance(result, dict) or "value" not in result:
            error = result.get("error") if isinstance(result, dict) else "no result"
            findings.append(Finding("runtime-method-failed", "error", f"constant method {method!r} did not run: {error}", paths=(name,)))
            continue
        got = result["value"]
        if not same_value(_flatten(got), _flatten(expected)):
            findings.append(
                Finding(
                    "metadata-snapshot-mismatch",
                    "error",
                    f"constant method {method!r}: the program returns {got!r}, metadata.json says {expected!r}",
                    hint="re-pack the deployment",
                    paths=(name,),
                )
            )
    return findings


def runtime_findings(archive: EtmArchive) -> list[Finding]:
    """Load every program with its data from the archive bytes, run every recorded constant
    method and compare it with the snapshot; load the tokenizer as the runner does."""
    findings: list[Finding] = []
    for record in archive.layout.programs:
        findings += _program_findings(archive, record)
    member = tokenizer_member(archive.metadata)
    if member is not None and member in archive.members:
        subject = Subject(
            kind="archive",
            tokenizer=read_archived_tokenizer(archive, member),
            tokenizer_label=member,
            program_label=MEMBER_PROGRAM,
            constant_methods={},
            has_tokenizer_config=MEMBER_TOKENIZER_CONFIG in archive.members,
        )
        findings += [f for f in check_runner_tokenizer(subject) if f.code == "tokenizer-not-loadable"]
    return findings


def verify(path: str | os.PathLike[str], *, runtime: bool = False) -> VerifyResult:
    """Verify an archive; every problem is collected, none stops the others.

    >>> verify("model.etm").ok  # doctest: +SKIP
    True
    """
    name = os.fspath(path)
    with open_archive(path) as archive:
        findings = integrity_findings(archive, cite=name)
        if not findings:  # intact members: does metadata.json tell the truth about them?
            findings += snapshot_findings(archive).findings
            if runtime:
                findings += runtime_findings(archive)
    return VerifyResult(name, tuple(sort_findings(findings)))


__all__ = ["VerifyResult", "runtime_findings", "verify"]
