"""``diagnose``: find the mismatches between programs, tokenizers, templates and weights.

:func:`diagnose` takes a legacy folder, a ``.pte`` with its siblings, an archive, or a whole
tree, and returns one :class:`DiagnoseReport`. Collect-then-report: no check stops another, and
an unreadable deployment inside a tree becomes a finding while the walk goes on. The checks
live in :mod:`etm_compat.checks`; a deployment's run with :func:`etm_compat.view.describe`.

No torch or executorch import happens unless ``runtime=True`` asks for the backend check;
without it that check is skipped, and the report says so in its ``checks_skipped`` field.
``app="android"|"ios"`` adds the demo-app checks (:mod:`etm_compat.checks.app`).

Each deployment and archive also carries its *details* for the report pages (JSON-ready and
bounded: every text capped, the sample rendering at :data:`SAMPLE_CHARS`): the family and its
evidence, bos/eos and where each came from, the stop set, what the runner takes, and
:data:`SAMPLE_CONVERSATION` rendered with the model's own template (:func:`view_details` for a
described deployment, :func:`metadata_details` for an archive's metadata.json).

>>> from etm_compat.adapters import default_adapters
>>> report = diagnose("fixtures/legacy", default_adapters())  # doctest: +SKIP
>>> report.summary["by_severity"]  # doctest: +SKIP
{'error': 0, 'warning': 1, 'info': 2}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from etm_compat.archive.read import is_archive, open_archive
from etm_compat.checks.app import AppTarget, check_app
from etm_compat.checks.archive import check_archive
from etm_compat.checks.folder import unused_ptd_files
from etm_compat.checks.run import registered_backends
from etm_compat.constants import MEMBER_METADATA, MEMBER_PROGRAM
from etm_compat.errors import EtmError, InputError, UnreadableError
from etm_compat.fileio import display_path
from etm_compat.findings import SEVERITY_RANK, Finding, Severity, sort_findings, worst
from etm_compat.infer.records import jsonable
from etm_compat.legacy.deployment import Adapter, Deployment, Skipped
from etm_compat.legacy.resolve import resolve_source
from etm_compat.legacy.scan import scan
from etm_compat.prompt.apps import get_app
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS
from etm_compat.prompt.render import render_prompt
from etm_compat.view import DeploymentView, describe

#: Version of the JSON report (etm_compat/schemas/diagnose.schema.json).
SCHEMA_VERSION: Final = 1
ReportKind = Literal["deployment", "archive", "skipped"]
#: The conversation a report renders with each deployment's template: a standard one with a
#: system message, or the same without it for templates that refuse the system role.
SAMPLE_CONVERSATION: Final = "system_multi_turn"
SAMPLE_FALLBACK: Final = "multi_turn"
#: Bounds of a deployment's details: each text, the sample rendering, items per list.
DETAIL_TEXT_CHARS: Final = 400
SAMPLE_CHARS: Final = 4096
DETAIL_ITEMS: Final = 40


@dataclass(frozen=True)
class DeploymentReport:
    """The findings about one deployment or archive; ``error`` when it could not be read.

    ``details`` (see :func:`view_details`) feed the report pages; the JSON report (schema 1)
    leaves them out unless ``to_json(details=True)`` asks.
    """

    name: str
    path: str
    kind: ReportKind
    findings: tuple[Finding, ...]
    error: str | None = None
    details: Mapping[str, Any] | None = None

    @property
    def worst(self) -> Severity | None:
        return worst(self.findings)

    def to_json(self, *, details: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "worst": self.worst,
            "error": self.error,
            "findings": [f.to_json() for f in self.findings],
        }
        if details:
            out["details"] = dict(self.details) if self.details is not None else None
        return out


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

    def to_json(self, *, details: bool = False) -> dict[str, Any]:
        """The JSON report (schema 1); ``details`` adds each deployment's details (the pages')."""
        return {
            "schema_version": self.schema_version,
            "tool": "etm-compat diagnose",
            "root": self.root,
            "summary": self.summary,
            "checks_skipped": list(self.checks_skipped),
            "deployments": [d.to_json(details=details) for d in self.deployments],
        }


# --- details: what a report page shows about one deployment ---------------------------------------


def _bounded(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-ready data within the detail bounds (texts, items, nesting)."""
    if isinstance(value, str):
        return value if len(value) <= DETAIL_TEXT_CHARS else value[:DETAIL_TEXT_CHARS] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 6:
        return _bounded(repr(value), depth)
    if isinstance(value, Mapping):
        items = list(value.items())[:DETAIL_ITEMS]
        return {_bounded(str(k), depth): _bounded(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_bounded(v, depth + 1) for v in value[:DETAIL_ITEMS]]
    return _bounded(str(value), depth)


def _sample(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The sample conversation (its name in :data:`~etm_compat.prompt.chat.STANDARD_CONVERSATIONS`)
    rendered as :func:`~etm_compat.prompt.render.render_prompt` does (without the system message
    when the template refuses it), capped at :data:`SAMPLE_CHARS`; else the rendering's error."""
    error: str | None = None
    for name in (SAMPLE_CONVERSATION, SAMPLE_FALLBACK):
        try:
            prompt = render_prompt(meta, STANDARD_CONVERSATIONS[name])
        except EtmError as exc:
            error = error or str(exc)
            continue
        cut = len(prompt) > SAMPLE_CHARS
        return {"conversation": name, "prompt": prompt[:SAMPLE_CHARS], "truncated": cut, "error": None}
    return {"conversation": None, "prompt": None, "truncated": False, "error": _bounded(error)}


def _token_text(special: Mapping[str, int], ids: Sequence[int]) -> list[str | None]:
    by_id = {token_id: text for text, token_id in reversed(list(special.items()))}  # first text wins
    return [by_id.get(i) for i in ids]


def _details(
    tokens: Mapping[str, Any], runner: Any, evidence: Sequence[Any], meta: Mapping[str, Any], conflicts: Sequence[Any] = ()
) -> dict[str, Any]:
    """The details' common shape; ``meta`` holds what rendering reads (template, bos/eos)."""
    ran = {k: runner[k] for k in ("bos_id", "eos_ids") if isinstance(runner, Mapping) and k in runner}
    out = {
        **tokens,
        "chat_template_source": meta.get("chat_template_source"),
        "runner": ran or None,
        "evidence": list(evidence),
        "evidence_total": len(evidence),
        "conflicts": list(conflicts),
    }
    bounded: dict[str, Any] = _bounded(out)
    return {**bounded, "sample": _sample(meta)}  # capped at its own bound


def view_details(view: DeploymentView) -> dict[str, Any]:
    """What a report page shows about a described deployment (JSON-ready, bounded).

    Keys: ``family`` (id, confidence, alternatives), ``chat_template_source``, ``bos`` and
    ``eos`` (ids, token texts and every source's value), ``num_bos``/``num_eos``, ``stop``
    (each id with its token text and sources), ``runner`` (the bos/eos the ExecuTorch runner
    takes, and from where), ``evidence`` (and ``evidence_total``), ``conflicts`` and ``sample``
    (the sample conversation and its rendering, or the rendering's error).
    """
    inf, special = view.inference, view.tokenizer.special_tokens

    def said(*fields: str) -> list[dict[str, Any]]:
        return [{"source": e.source, "value": jsonable(e.value)} for e in inf.evidence if e.field in fields]

    eos_text = _token_text(special, inf.eos_ids)
    tokens = {
        "family": {"id": inf.family_id, "confidence": inf.family_confidence, "alternatives": inf.family_alternatives},
        "bos": {"id": inf.bos_id, "token": inf.bos_token, "sources": said("bos_id", "bos_token")},
        "eos": {"ids": inf.eos_ids, "tokens": eos_text, "sources": said("eos_ids", "eos_token")},
        "num_bos": inf.num_bos,
        "num_eos": inf.num_eos,
        "stop": [
            {"id": i, "token": text, "sources": inf.stop_token_sources.get(i, ())}
            for i, text in zip(inf.stop_token_ids, _token_text(special, inf.stop_token_ids), strict=True)
        ],
    }
    tokenizer: dict[str, Any] = {"bos_token": inf.bos_token, "eos_tokens": eos_text}
    if inf.special_tokens_map:  # the strings the template sees, as render and pack record them
        tokenizer["special_tokens_map"] = dict(inf.special_tokens_map)
    meta = {
        "chat_template": inf.chat_template,
        "chat_template_source": inf.chat_template_source,
        "tokenizer": tokenizer,
    }
    evidence, conflicts = [e.to_json() for e in inf.evidence], [c.to_json() for c in inf.conflicts]
    return _details(tokens, view.runner.to_json(), evidence, meta, conflicts)


def metadata_details(meta: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`view_details` for an archive, from its metadata.json (which keeps the family's
    evidence only: the other sources are not recorded, so their lists are empty)."""

    def section(key: str) -> Mapping[str, Any]:
        value = meta.get(key)
        return value if isinstance(value, Mapping) else {}

    fam, tok, gen = section("family"), section("tokenizer"), section("generation")
    eos_ids = [i for i in tok.get("eos_ids") or [] if isinstance(i, int)]
    eos_text = list(tok.get("eos_tokens") or [])[: len(eos_ids)]
    known = dict(zip(eos_ids, eos_text, strict=False))
    tokens: dict[str, Any] = {
        "family": {"id": fam.get("id"), "confidence": fam.get("confidence"), "alternatives": fam.get("alternatives") or []},
        "bos": {"id": tok.get("bos_id"), "token": tok.get("bos_token"), "sources": []},
        "eos": {"ids": eos_ids, "tokens": eos_text, "sources": []},
        "num_bos": gen.get("num_bos"),
        "num_eos": gen.get("num_eos"),
        "stop": [
            {"id": i, "token": known.get(i), "sources": []}
            for i in gen.get("stop_token_ids") or [] if isinstance(i, int)
        ],
    }
    evidence = [e for e in fam.get("evidence") or [] if isinstance(e, Mapping)]
    return _details(tokens, meta.get("runner"), evidence, meta)


def _archive_details(path: Path) -> dict[str, Any] | None:
    try:
        with open_archive(path) as archive:
            return metadata_details(archive.metadata)
    except EtmError:
        return None


# --- building the report ------------------------------------------------------------------------


def _view_target(view: DeploymentView) -> AppTarget:
    dep, inf = view.deployment, view.inference
    return AppTarget(
        kind="deployment",
        program_name=dep.program.name,
        program_label=display_path(dep.program, dep.root),
        stem=dep.program.stem,
        family_id=inf.family_id,
        template=inf.chat_template,
        template_label=inf.chat_template_source or "chat template",
        bos_token=view.tokenizer.bos_token,
        eos_token=view.tokenizer.eos_token,
    )


def _archive_app_findings(path: Path, app: str | None) -> list[Finding]:
    """The demo-app checks on what metadata.json records (the app is given ``unpack``'s files)."""
    if app is None:
        return []
    with open_archive(path) as archive:
        meta = archive.metadata
    family = meta.get("family") if isinstance(meta.get("family"), dict) else {}
    tokenizer = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
    assert isinstance(family, dict) and isinstance(tokenizer, dict)
    eos = [t for t in tokenizer.get("eos_tokens") or [] if isinstance(t, str) and t]
    template, family_id, bos = meta.get("chat_template"), family.get("id"), tokenizer.get("bos_token")
    target = AppTarget(
        kind="archive",
        program_name=MEMBER_PROGRAM,
        program_label=MEMBER_PROGRAM,
        stem=path.stem,
        family_id=family_id if isinstance(family_id, str) else None,
        template=template if isinstance(template, str) else None,
        template_label=f"{MEMBER_METADATA} chat_template",
        bos_token=bos if isinstance(bos, str) else None,
        eos_token=eos[0] if eos else None,
    )
    return check_app(app, target)


def _deployment_report(
    dep: Deployment,
    root: Path,
    backends: frozenset[str] | None,
    extra: Sequence[Finding] = (),
    app: str | None = None,
) -> DeploymentReport:
    name = display_path(dep.program, root)
    try:
        view = describe(dep, registered_backends=backends)
    except EtmError as exc:
        finding = Finding("input-unreadable", "error", str(exc), exc.hint, (name,))
        unread = tuple(sort_findings([finding, *extra]))
        return DeploymentReport(name, str(dep.program), "deployment", unread, str(exc))
    app_findings = check_app(app, _view_target(view)) if app is not None else []
    findings = sort_findings([*view.findings, *extra, *app_findings])
    return DeploymentReport(
        name, str(dep.program), "deployment", tuple(findings), details=view_details(view)
    )


def _archive_report(path: Path, name: str, app: str | None = None) -> DeploymentReport:
    try:
        findings = check_archive(path) + _archive_app_findings(path, app)
    except EtmError as exc:
        finding = Finding("archive-unreadable", "error", str(exc), exc.hint, (name,))
        return DeploymentReport(name, str(path), "archive", (finding,), str(exc))
    details = _archive_details(path)
    return DeploymentReport(name, str(path), "archive", tuple(sort_findings(findings)), details=details)


def _skipped_report(skipped: Skipped, root: Path) -> DeploymentReport:
    name = display_path(skipped.path, root)
    if skipped.ignored:
        finding = Finding("file-not-packed", "info", skipped.reason, "nothing to do: it is no part of an ExecuTorch deployment", (name,))
    elif skipped.unreadable:
        finding = Finding("input-unreadable", "error", skipped.reason, skipped.hint, (name,))
    else:
        hint = "put the program's tokenizer next to it, or name it: pack --tokenizer PATH"
        finding = Finding("deployment-skipped", "warning", skipped.reason, hint, (name,))
    return DeploymentReport(name, str(skipped.path), "skipped", (finding,))


def diagnose(
    path: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    runtime: bool = False,
    app: str | None = None,
) -> DiagnoseReport:
    """Diagnose an archive, a ``.pte`` with its siblings, a legacy folder, or a whole tree.

    A path that does not exist raises :class:`~etm_compat.errors.UnreadableError`; a single
    ``.pte``/archive that cannot be read raises its reader's error; inside a tree, unreadable
    deployments become ``input-unreadable`` findings and the walk goes on. ``runtime=True``
    also checks delegate backends against the installed ExecuTorch runtime (imports torch).
    ``app`` (``"android"`` or ``"ios"``, see :data:`etm_compat.prompt.apps.APP_IDS`) also
    checks each program the way that ExecuTorch demo app would take it: the model type its
    file name selects, and the app's prompt format against the model's chat template.
    """
    if app is not None:
        get_app(app)  # an unknown app fails before any work
    target = Path(path)
    if not target.exists():
        raise UnreadableError("no such file or folder", path=target)
    backends = registered_backends() if runtime else None
    skipped_checks = () if runtime else ("backend-not-registered (needs --runtime)",)
    if target.is_file():
        if is_archive(target):
            findings = check_archive(target) + _archive_app_findings(target, app)
            report = DeploymentReport(
                target.name, str(target), "archive", tuple(sort_findings(findings)),
                details=_archive_details(target),
            )
            return DiagnoseReport(str(target), (report,), checks_skipped=skipped_checks)
        dep = resolve_source(target, adapters)
        extra = unused_ptd_files([dep]).get(dep.program, [])
        one = _deployment_report(dep, target.parent, backends, extra, app)
        return DiagnoseReport(str(target), (one,), checks_skipped=skipped_checks)
    result = scan(target, adapters)
    unused = unused_ptd_files(result.deployments)
    reports = [
        _deployment_report(d, target, backends, unused.get(d.program, ()), app) for d in result.deployments
    ]
    reports += [_skipped_report(s, target) for s in result.skipped]
    reports += [_archive_report(p, display_path(p, target), app) for p in result.archives]
    if not reports:
        raise InputError(
            "no ExecuTorch program (.pte) or .etm archive found under this folder",
            path=target,
            hint="diagnose takes a legacy deployment folder, a .pte, an .etm archive or a tree of them",
        )
    reports.sort(key=lambda r: (SEVERITY_RANK[r.worst] if r.worst else 3, r.name))
    return DiagnoseReport(str(target), tuple(reports), checks_skipped=skipped_checks)


__all__ = [
    "SAMPLE_CONVERSATION", "SCHEMA_VERSION", "DeploymentReport", "DiagnoseReport", "ReportKind",
    "diagnose", "metadata_details", "view_details",
]
