"""``verify``: is an archive whole, and does it still say the truth about its program?

Structure and hashes always (the integrity check ``diagnose`` runs too); with ``runtime=True``
the program is loaded in the real ExecuTorch runtime (straight from the archive bytes), its
constant methods are compared with the metadata snapshot, and the tokenizer is loaded through
pytorch_tokenizers as the on-device runner would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from etm_compat.archive import EtmArchive, open_archive
from etm_compat.archive.layout import ProgramRecord
from etm_compat.archive.metadata import tokenizer_member
from etm_compat.checks.archive import integrity_findings, read_archived_tokenizer, same_value
from etm_compat.checks.subject import Subject
from etm_compat.checks.tokens import check_runner_tokenizer
from etm_compat.compat.runtime import load_program_from_archive
from etm_compat.constants import MAIN_PROGRAM_NAME, MEMBER_PROGRAM, MEMBER_TOKENIZER_CONFIG
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


def _program_findings(archive: EtmArchive, record: ProgramRecord) -> list[Finding]:
    """Load one program with its data from the archive bytes, run every recorded constant method
    and compare it with the snapshot."""
    name = str(archive.path) if record.name == MAIN_PROGRAM_NAME else f"{archive.path}!{record.member}"
    findings: list[Finding] = []
    snapshot = (record.snapshot or {}).get("constant_methods") or {}
    program = load_program_from_archive(archive, program=record.name)
    for method, expected in snapshot.items():
        try:
            got = list(program.load_method(method).execute([]))
        except Exception as exc:  # the runtime raises bare RuntimeError for any load failure
            findings.append(Finding("runtime-method-failed", "error", f"constant method {method!r} did not run: {exc}", paths=(name,)))
            continue
        if not same_value(got, _flatten(expected)):
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
        if runtime and not findings:
            findings += runtime_findings(archive)
    return VerifyResult(name, tuple(sort_findings(findings)))


__all__ = ["VerifyResult", "runtime_findings", "verify"]
