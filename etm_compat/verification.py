"""``verify``: is an archive whole, and does it still say the truth about its program?

Structure and hashes always; with ``runtime=True`` the program is loaded in the real ExecuTorch
runtime (straight from the archive bytes), its constant methods are compared with the metadata
snapshot, and the tokenizer is loaded through pytorch_tokenizers as the on-device runner would.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etm_compat.errors import EtmError
from etm_compat.findings import Finding, sort_findings


@dataclass(frozen=True)
class VerifyReport:
    path: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "findings": [f.to_json() for f in self.findings]}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    return [value]


def check_runtime(archive: Any) -> list[Finding]:
    """Load the program from the archive bytes and compare constant methods with the snapshot."""
    from etm_compat.compat.runtime import load_program_from_archive

    findings: list[Finding] = []
    name = str(archive.path)
    snapshot = (archive.metadata.get("program") or {}).get("constant_methods") or {}
    program = load_program_from_archive(archive)
    for method, expected in snapshot.items():
        try:
            got = list(program.load_method(method).execute([]))
        except Exception as exc:  # the runtime raises bare RuntimeError for any load failure
            findings.append(Finding("runtime-method-failed", "error", f"constant method {method!r} did not run: {exc}", paths=(name,)))
            continue
        if not _same(got, _flatten(expected)):
            findings.append(
                Finding(
                    "metadata-snapshot-mismatch",
                    "error",
                    f"constant method {method!r}: the program returns {got!r}, metadata.json says {expected!r}",
                    hint="re-pack the deployment",
                    paths=(name,),
                )
            )
    tok_meta = archive.metadata.get("tokenizer") or {}
    member = tok_meta.get("member")
    if member and member in archive.members:
        findings.extend(_check_tokenizer(archive, member))
    return findings


def _check_tokenizer(archive: Any, member: str) -> list[Finding]:
    from etm_compat.formats.tokenizer.detect import read_tokenizer

    with tempfile.TemporaryDirectory(prefix="etm-verify-") as tmp:
        # pytorch_tokenizers loads by path only: the tokenizer (small) is written to a scratch dir.
        target = Path(tmp) / member
        target.write_bytes(bytes(archive.member_view(member)))
        config = None
        if "tokenizer_config.json" in archive.members:
            config = Path(tmp) / "tokenizer_config.json"
            config.write_bytes(bytes(archive.member_view("tokenizer_config.json")))
        info = read_tokenizer(target, config_path=config, check_runner=True)
    if info.runner is not None and info.runner.loadable is False:
        return [
            Finding(
                "tokenizer-not-loadable",
                "error",
                f"pytorch_tokenizers cannot load {member}: {info.runner.error}",
                paths=(str(archive.path),),
            )
        ]
    return []


def verify(path: str | os.PathLike[str], *, runtime: bool = False) -> VerifyReport:
    """Verify an archive; every problem is collected, none stops the others.

    >>> verify("model.etm").ok  # doctest: +SKIP
    True
    """
    from etm_compat.archive import open_archive

    name = os.fspath(path)
    findings: list[Finding] = []
    with open_archive(path) as archive:
        for problem in archive.verify():
            findings.append(Finding("archive-integrity", "error", str(problem), paths=(name,)))
        if runtime and not findings:
            try:
                findings.extend(check_runtime(archive))
            except EtmError:
                raise
    return VerifyReport(name, tuple(sort_findings(findings)))
