"""Archive checks: integrity, metadata snapshot vs the archived program and tokenizer.

Shared by ``verify`` (integrity, and the tokenizer and snapshot checks of ``verify --runtime``)
and ``diagnose`` (all of them). No runtime is needed: the archived ``model.pte`` head is read
with :func:`~etm_compat.formats.pte.open_program_at`, each ``.ptd``'s FlatBuffer with
:func:`~etm_compat.formats.ptd.read_ptd_at`, both through ``pread`` (never the mapping: an
archive truncated meanwhile is an error, not SIGBUS), and the tokenizer (which the readers take
by path) is copied to a scratch folder, read, and deleted. Then the mismatch checks run on what
metadata.json records (template, stop set, num_bos) against those archived files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etm_compat.archive.read import EtmArchive, open_archive
from etm_compat.checks.run import family_of, run_checks
from etm_compat.checks.subject import Subject, finding
from etm_compat.constants import MEMBER_METADATA, MEMBER_PROGRAM, MEMBER_TOKENIZER_CONFIG
from etm_compat.errors import EtmError
from etm_compat.findings import Finding
from etm_compat.formats.flatfile import Read
from etm_compat.formats.ptd import read_ptd_at
from etm_compat.formats.pte import PteInfo, describe_program, open_program_at
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.model import TokenizerInfo


def _tensor_leaves(items: list[Any]) -> list[Any]:
    """A runtime output list with each tensor (anything with ``tolist()``) replaced by its
    flattened values: the way the .pte reader and metadata.json hold a constant tensor."""
    out: list[Any] = []
    for item in items:
        if callable(getattr(item, "tolist", None)):
            stack, leaves = [item.tolist()], []
            while stack:
                top = stack.pop()
                if isinstance(top, list):
                    stack.extend(reversed(top))
                else:
                    leaves.append(top)
            out += leaves
        else:
            out.append(item)
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values (bools are not ints; floats compared with a relative tolerance).

    A runtime tensor inside a list stands for its flattened values (``verify --runtime``
    compares the runtime's outputs with the snapshot's flattened values).
    """
    if isinstance(a, list) and isinstance(b, list):
        a, b = _tensor_leaves(a), _tensor_leaves(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, int | float) and isinstance(b, int | float)):
            return False
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)


def _snapshot(pte: PteInfo, meta: Mapping[str, Any]) -> list[Finding]:
    program = meta.get("program") if isinstance(meta.get("program"), dict) else {}
    recorded = program.get("constant_methods") if isinstance(program, dict) else None
    if not isinstance(recorded, dict):
        return []
    real = dict(pte.constant_methods)
    diffs: list[str] = []
    for name in sorted(set(real) | set(recorded)):
        if name not in real:
            diffs.append(f"{name}: recorded {recorded[name]!r}, absent from the program")
        elif name not in recorded:
            diffs.append(f"{name}: the program returns {real[name]!r}, not recorded")
        elif not same_value(real[name], recorded[name]):
            diffs.append(f"{name}: the program returns {real[name]!r}, metadata says {recorded[name]!r}")
    if not diffs:
        return []
    return [
        finding(
            "metadata-snapshot-mismatch",
            "error",
            f"metadata.json's constant-method snapshot disagrees with {MEMBER_PROGRAM}: "
            + "; ".join(diffs[:6])
            + (" ..." if len(diffs) > 6 else ""),
            "re-pack the deployment: the metadata must describe the program it ships with",
            MEMBER_METADATA,
            MEMBER_PROGRAM,
        )
    ]


def _weights_snapshot(real: Mapping[str, frozenset[str]], meta: Mapping[str, Any]) -> list[Finding]:
    """``metadata.json``'s ``weights[].keys`` against the keys each archived ``.ptd`` holds."""
    entries = meta.get("weights")
    diffs: list[str] = []
    differing: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        member = entry.get("member") if isinstance(entry, dict) else None
        keys = entry.get("keys") if isinstance(entry, dict) else None
        if not isinstance(member, str) or member not in real or not isinstance(keys, list):
            continue  # unreadable or damaged: reported as such
        recorded = frozenset(k for k in keys if isinstance(k, str))
        missing, extra = sorted(recorded - real[member]), sorted(real[member] - recorded)
        if missing or extra:
            differing.append(member)
            diffs.append(f"{member}: recorded keys absent from the file {missing[:3]}, "
                         f"keys not recorded {extra[:3]}")  # fmt: skip
    if not diffs:
        return []
    return [
        finding(
            "metadata-snapshot-mismatch",
            "error",
            "metadata.json's weights keys disagree with the archived files: " + "; ".join(diffs[:6]),
            "re-pack the deployment: the metadata must describe the weights it ships with",
            MEMBER_METADATA,
            *differing,
        )
    ]


def _tokenizer_meta(tok: TokenizerInfo, member: str, meta: Mapping[str, Any]) -> list[Finding]:
    recorded = meta.get("tokenizer")
    if not isinstance(recorded, dict):
        return []
    diffs = []
    for key, real in (("format", tok.format), ("vocab_size", tok.vocab_size)):
        if key in recorded and recorded[key] != real:
            diffs.append(f"{key}: metadata says {recorded[key]!r}, {member} has {real!r}")
    if not diffs:
        return []
    return [
        finding(
            "metadata-tokenizer-mismatch",
            "error",
            "metadata.json does not describe the archived tokenizer: " + "; ".join(diffs),
            "re-pack the deployment with its own tokenizer",
            MEMBER_METADATA,
            member,
        )
    ]


def read_archived_tokenizer(archive: EtmArchive, member: str) -> TokenizerInfo:
    """Read an archived tokenizer as the runner would (pytorch_tokenizers loads by path only:
    the member, and tokenizer_config.json when present, go to a scratch folder for the read)."""
    with tempfile.TemporaryDirectory(prefix="etm-diagnose-") as tmp:
        target = Path(tmp) / Path(member).name
        target.write_bytes(archive.read_member(member))  # pread: a truncated archive is an error
        config = None
        if MEMBER_TOKENIZER_CONFIG in archive.members:
            config = Path(tmp) / MEMBER_TOKENIZER_CONFIG
            config.write_bytes(archive.read_member(MEMBER_TOKENIZER_CONFIG))
        return read_tokenizer(target, config_path=config, check_runner=True)


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))


def integrity_findings(archive: EtmArchive, *, cite: str | None = None) -> list[Finding]:
    """Every member whose bytes fail their CRC-32 or sha256, as ``archive-integrity`` errors.

    Each finding cites the damaged member and says how to fix it; with ``cite`` it cites that
    name instead and carries no hint (``verify``'s one-line-per-problem form).
    """
    if cite is not None:
        return [Finding("archive-integrity", "error", str(p), paths=(cite,)) for p in archive.verify()]
    return [
        finding("archive-integrity", "error", str(p), p.hint, p.member) for p in archive.verify()
    ]


@dataclass(frozen=True)
class ArchiveSnapshot:
    """What :func:`snapshot_findings` read of an archive's members, for the checks that follow."""

    findings: tuple[Finding, ...]
    pte: PteInfo | None
    tokenizer: TokenizerInfo | None
    tokenizer_member: str | None
    weights: tuple[tuple[str, frozenset[str]], ...]  # (member, its keys)


def _reader(archive: EtmArchive, member: str) -> tuple[Read, int]:
    """A member read with ``pread`` (never through the mapping, which a truncation turns into
    SIGBUS), and its size: what the FlatBuffer readers take."""
    return (lambda at, n: archive.read_member(member, at, n)), archive.member_range(member)[1]


def snapshot_findings(archive: EtmArchive, damaged: frozenset[str] = frozenset()) -> ArchiveSnapshot:
    """Read the program head, the tokenizer and each ``.ptd``'s keys (never the runtime) and
    compare them with what metadata.json claims: constant methods, tokenizer format and vocab,
    weights keys. ``damaged`` members (failed integrity) are not read again."""
    findings: list[Finding] = []
    meta = archive.metadata
    pte: PteInfo | None = None
    # A damaged member is reported once, as damaged, and not read further.
    if MEMBER_PROGRAM in archive.members and MEMBER_PROGRAM not in damaged:
        try:
            pte = describe_program(open_program_at(*_reader(archive, MEMBER_PROGRAM), name=MEMBER_PROGRAM))
        except EtmError as exc:
            findings.append(finding("archive-unreadable", "error", str(exc), exc.hint or "", MEMBER_PROGRAM))
    if pte is not None:
        findings += _snapshot(pte, meta)
    tok_meta = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
    member = tok_meta.get("member") if isinstance(tok_meta, dict) else None
    tok: TokenizerInfo | None = None
    if isinstance(member, str) and member in archive.members and member not in damaged:
        try:
            tok = read_archived_tokenizer(archive, member)
        except EtmError as exc:
            findings.append(finding("archive-unreadable", "error", str(exc), exc.hint or "", member))
    if tok is not None and isinstance(member, str):
        findings += _tokenizer_meta(tok, member, meta)
    weights: list[tuple[str, frozenset[str]]] = []
    for name in sorted(archive.members):
        if name.startswith("weights/") and name.endswith(".ptd") and name not in damaged:
            try:
                weights.append((name, read_ptd_at(*_reader(archive, name), name=name).keys))
            except EtmError as exc:
                findings.append(finding("archive-unreadable", "error", str(exc), exc.hint or "", name))
    findings += _weights_snapshot(dict(weights), meta)
    return ArchiveSnapshot(tuple(findings), pte, tok, member if isinstance(member, str) else None, tuple(weights))


def check_archive(path: Path) -> list[Finding]:
    """Every archive-level finding: integrity, snapshot, tokenizer, and the subject checks."""
    findings: list[Finding] = []
    with open_archive(path) as archive:
        findings += integrity_findings(archive)
        meta = archive.metadata
        snap = snapshot_findings(archive, frozenset(f.paths[0] for f in findings))
        findings += snap.findings
        pte, tok, member, weights = snap.pte, snap.tokenizer, snap.tokenizer_member, snap.weights
        if pte is None:
            return findings
        family = meta.get("family") if isinstance(meta.get("family"), dict) else {}
        generation = meta.get("generation") if isinstance(meta.get("generation"), dict) else {}
        assert isinstance(family, dict) and isinstance(generation, dict)
        template = meta.get("chat_template")
        source = meta.get("chat_template_source")
        num_bos = generation.get("num_bos")
        vocab = pte.constant_methods.get("get_vocab_size")
        model_vocab = (
            ((vocab, MEMBER_PROGRAM),) if isinstance(vocab, int) and not isinstance(vocab, bool) else ()
        )
        subject = Subject(
            kind="archive",
            tokenizer=tok,
            tokenizer_label=member if isinstance(member, str) else "tokenizer",
            program_label=MEMBER_PROGRAM,
            constant_methods=dict(pte.constant_methods),
            external_keys=tuple(pte.external_keys),
            backends=tuple(pte.backends),
            weights=tuple(weights),
            model_vocab=model_vocab,
            template=template if isinstance(template, str) else None,
            template_label=f"{MEMBER_METADATA} chat_template",
            template_from_files=not (isinstance(source, str) and source.startswith("registry")),
            family=family_of(family.get("id") if isinstance(family.get("id"), str) else None),
            stop_ids=_ints(generation.get("stop_token_ids")),
            num_bos=num_bos if isinstance(num_bos, int) and not isinstance(num_bos, bool) else 0,
            has_tokenizer_config=MEMBER_TOKENIZER_CONFIG in archive.members,
        )
        findings += run_checks(subject)
    return findings


__all__ = [
    "ArchiveSnapshot",
    "check_archive",
    "integrity_findings",
    "read_archived_tokenizer",
    "same_value",
    "snapshot_findings",
]
