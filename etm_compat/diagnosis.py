"""``diagnose``: find the mismatches between a program, its tokenizer, template and weights.

Three entry points, all collect-then-report (no check stops another) and none prints:

* :func:`diagnose_view` - the checks on one described deployment (``pack.describe`` merges them
  into ``DeploymentView.findings``);
* :func:`diagnose_archive` - an ``.etm`` archive: integrity, the metadata snapshot against the
  archived program's real constant methods, the metadata against the archived tokenizer, and the
  same mismatch checks on what the archive records;
* :func:`diagnose_path` - a legacy folder, a ``.pte`` with its siblings, an archive, or a whole
  tree, as one :class:`DiagnoseReport`.

No torch or executorch import happens unless ``runtime=True`` asks for the backend check
(``Runtime.get().backend_registry``); without it that check is skipped, and the report says so
in its ``checks_skipped`` field.

>>> from etm_compat.adapters import default_adapters
>>> report = diagnose_path("fixtures/legacy", default_adapters())  # doctest: +SKIP
>>> report.summary["by_severity"]  # doctest: +SKIP
{'error': 0, 'warning': 1, 'info': 2}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from etm_compat.formats.configs import read_config
from etm_compat.checks.tokens import (
    Subject,
    check_backends,
    check_eos,
    check_program,
    check_runner_tokenizer,
    check_special_ids,
    check_vocab,
    check_weights,
    end_of_turn_id,
)
from etm_compat.diagnosis_report import SCHEMA_VERSION, DeploymentReport, DiagnoseReport
from etm_compat.diagnosis_report import ReportKind as ReportKind  # re-exported
from etm_compat.checks.template import check_template, render_all, template_end_of_turn
from etm_compat.errors import EtmError, InputError, UnreadableError
from etm_compat.prompt.families import Family, load_registry
from etm_compat.findings import SEVERITY_RANK, Finding, sort_findings

if TYPE_CHECKING:
    from etm_compat.legacy.deployment import Adapter, Deployment
    from etm_compat.packing import DeploymentView

log = logging.getLogger(__name__)

_MAX_DEPTH: Final = 32


# --- one deployment -------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return str(path)
    return path.name if rel.startswith("..") else rel


def _model_vocab(dep: Deployment, view_cm: dict[str, Any]) -> tuple[tuple[int, str], ...]:
    sizes: list[tuple[int, str]] = []
    size = view_cm.get("get_vocab_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        sizes.append((size, _rel(dep.program, dep.root)))
    for role in ("params", "config"):
        path = dep.configs.get(role)
        if path is None:
            continue
        try:
            cfg = read_config(role, path)
        except EtmError:
            continue  # inference already reports unreadable configs
        value = cfg.get("vocab_size")
        if value is None and isinstance(cfg.get("text_config"), dict):
            value = cfg["text_config"].get("vocab_size")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sizes.append((value, _rel(path, dep.root)))
    return tuple(sizes)


def _config_ids(dep: Deployment) -> tuple[tuple[str, int, str], ...]:
    ids: list[tuple[str, int, str]] = []
    for role in ("config", "generation_config"):
        path = dep.configs.get(role)
        if path is None:
            continue
        try:
            cfg = read_config(role, path)
        except EtmError:
            continue
        label = _rel(path, dep.root)
        for key, kind in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
            value = cfg.get(key)
            values = value if isinstance(value, list) else [value]
            ids += [(kind, v, label) for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return tuple(ids)


def _add_bos(dep: Deployment) -> bool | None:
    path = dep.configs.get("tokenizer_config")
    if path is None:
        return None
    try:
        value = read_config("tokenizer_config", path).get("add_bos_token")
    except EtmError:
        return None
    return value if isinstance(value, bool) else None


def family_of(family_id: str | None) -> Family | None:
    """The registry family with this id, or None (unknown ids are not an error here)."""
    return load_registry().get(family_id) if family_id else None


def run_checks(s: Subject, *, registered_backends: frozenset[str] | None = None) -> list[Finding]:
    """Every subject-level check, in a stable order."""
    rendered = render_all(s)
    template_eot = template_end_of_turn(s, rendered)
    eot = end_of_turn_id(s, template_eot)
    findings: list[Finding] = []
    findings += check_vocab(s)
    findings += check_special_ids(s)
    findings += check_eos(s, eot)
    findings += check_runner_tokenizer(s)
    findings += check_template(s, rendered, template_eot)
    findings += check_program(s)
    findings += check_weights(s)
    findings += check_backends(s, registered_backends)
    return findings


def subject_of_view(view: DeploymentView) -> Subject:
    """The plain values the checks read, from a described deployment."""
    dep, inf = view.deployment, view.inference
    source = inf.chat_template_source
    return Subject(
        kind="deployment",
        tokenizer=view.tokenizer,
        tokenizer_label=_rel(Path(view.tokenizer.path), dep.root),
        program_label=_rel(dep.program, dep.root),
        constant_methods=dict(view.pte.constant_methods),
        external_keys=tuple(view.pte.external_keys),
        backends=tuple(view.pte.backends),
        weights=tuple((_rel(p, dep.root), w.keys) for p, w in zip(dep.weights, view.weights, strict=False)),
        model_vocab=_model_vocab(dep, dict(view.pte.constant_methods)),
        config_ids=_config_ids(dep),
        template=inf.chat_template,
        template_label=source or "chat template",
        template_from_files=source is not None and not source.startswith("registry"),
        family=family_of(inf.family_id),
        stop_ids=tuple(inf.stop_token_ids),
        num_bos=inf.num_bos,
        add_bos_token=_add_bos(dep),
        has_tokenizer_config="tokenizer_config" in dep.configs,
        prior_codes=frozenset(f.code for f in inf.findings),
    )


def diagnose_view(
    view: DeploymentView, *, registered_backends: frozenset[str] | None = None
) -> list[Finding]:
    """The mismatch checks on one deployment (inference's own findings are not repeated).

    >>> from etm_compat.packing import describe, resolve_source  # doctest: +SKIP
    >>> diagnose_view(describe(resolve_source("fixtures/broken/vocab_too_small", adapters)))  # doctest: +SKIP
    [Finding(code='vocab-tokenizer-larger', severity='error', ...)]
    """
    return run_checks(subject_of_view(view), registered_backends=registered_backends)


def merge_findings(*groups: Sequence[Finding]) -> tuple[Finding, ...]:
    """Concatenate, keeping the first finding for each (code, paths)."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    out: list[Finding] = []
    for group in groups:
        for f in group:
            key = (f.code, f.paths)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return tuple(out)


def diagnose_archive(path: str | os.PathLike[str]) -> list[Finding]:
    """Check an ``.etm`` archive: integrity, metadata vs the archived program and tokenizer, and
    the mismatch checks on what it records. Unopenable archives raise their reader's error.

    >>> diagnose_archive("out/model.etm")  # doctest: +SKIP
    []
    """
    from etm_compat.checks.archive import check_archive

    return check_archive(Path(path))


def registered_backends() -> frozenset[str] | None:
    """Backends the installed ExecuTorch runtime registers; None when it is not installed.

    This imports torch and executorch: only ``diagnose --runtime`` calls it.
    """
    try:
        from executorch.runtime import Runtime
    except ImportError:
        log.info("executorch is not installed: backend check skipped")
        return None
    names = Runtime.get().backend_registry.registered_backend_names
    return frozenset(str(n) for n in names)


# --- a path ---------------------------------------------------------------------------------


def _is_archive(path: Path) -> bool:
    if path.suffix == ".etm":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _archives_under(root: Path) -> Iterator[Path]:
    """``*.etm`` files under root: no symlinked folders, no hidden folders, bounded depth."""
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if len(here.parts) - base_depth >= _MAX_DEPTH:
            dirs[:] = []
        for name in sorted(files):
            if name.endswith(".etm") and not name.startswith("."):
                yield here / name


def _deployment_report(
    dep: Deployment, root: Path, backends: frozenset[str] | None
) -> DeploymentReport:
    from etm_compat.packing import describe

    name = _rel(dep.program, root)
    try:
        view = describe(dep)
    except EtmError as exc:
        finding = Finding("input-unreadable", "error", str(exc), exc.hint, (name,))
        return DeploymentReport(name, str(dep.program), "deployment", (finding,), str(exc))
    findings = list(view.findings)
    if backends is not None:
        s = subject_of_view(view)
        findings += check_backends(s, backends)
    return DeploymentReport(name, str(dep.program), "deployment", tuple(sort_findings(findings)))


def _archive_report(path: Path, root: Path) -> DeploymentReport:
    name = _rel(path, root) if path != root else path.name
    try:
        findings = diagnose_archive(path)
    except EtmError as exc:
        finding = Finding("archive-unreadable", "error", str(exc), exc.hint, (name,))
        return DeploymentReport(name, str(path), "archive", (finding,), str(exc))
    return DeploymentReport(name, str(path), "archive", tuple(sort_findings(findings)))


def _unused_ptd_files(deployments: Sequence[Deployment], root: Path) -> dict[Path, list[Finding]]:
    """Per folder: .ptd files no program of that folder took (attached to its first program)."""
    from etm_compat.formats.ptd import is_ptd_file

    out: dict[Path, list[Finding]] = {}
    by_folder: dict[Path, list[Deployment]] = {}
    for dep in deployments:
        by_folder.setdefault(dep.program.parent, []).append(dep)
    for folder, deps in by_folder.items():
        used = {p.resolve() for d in deps for p in d.weights}
        try:
            ptds = sorted(p for p in folder.iterdir() if p.suffix == ".ptd" and p.is_file())
        except OSError:
            continue
        for ptd in ptds:
            if ptd.resolve() in used or not is_ptd_file(ptd):
                continue
            out.setdefault(deps[0].program, []).append(
                Finding(
                    "weights-unused-file",
                    "warning",
                    f"no program in {folder.name or folder} uses {ptd.name}: none of its keys "
                    "is an external key of a program here",
                    "remove it, or ship the program it belongs to",
                    (_rel(ptd, deps[0].root),),
                )
            )
    return out


def diagnose_path(
    path: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    runtime: bool = False,
) -> DiagnoseReport:
    """Diagnose an archive, a ``.pte`` with its siblings, a legacy folder, or a whole tree.

    A path that does not exist raises :class:`~etm_compat.errors.UnreadableError`; a single
    ``.pte``/archive that cannot be read raises its reader's error; inside a tree, unreadable
    deployments become ``input-unreadable`` findings and the walk goes on.
    """
    target = Path(path)
    if not target.exists():
        raise UnreadableError("no such file or folder", path=target)
    backends = registered_backends() if runtime else None
    skipped_checks = () if runtime else ("backend-not-registered (needs --runtime)",)
    if target.is_file():
        if _is_archive(target):
            findings = diagnose_archive(target)
            report = DeploymentReport(target.name, str(target), "archive", tuple(sort_findings(findings)))
            return DiagnoseReport(str(target), (report,), checks_skipped=skipped_checks)
        from etm_compat.packing import resolve_source

        dep = resolve_source(target, adapters)
        one = _deployment_report(dep, target.parent, backends)
        extra = _unused_ptd_files([dep], target.parent).get(dep.program, [])
        one = DeploymentReport(one.name, one.path, one.kind, tuple(sort_findings([*one.findings, *extra])), one.error)
        return DiagnoseReport(str(target), (one,), checks_skipped=skipped_checks)
    from etm_compat.legacy.scan import scan

    result = scan(target, adapters)
    reports: list[DeploymentReport] = []
    unused = _unused_ptd_files(result.deployments, target)
    for dep in result.deployments:
        one = _deployment_report(dep, target, backends)
        extra = unused.get(dep.program, [])
        if extra:
            one = DeploymentReport(one.name, one.path, one.kind, tuple(sort_findings([*one.findings, *extra])), one.error)
        reports.append(one)
    for skipped in result.skipped:
        name = _rel(skipped.path, target)
        reports.append(
            DeploymentReport(
                name,
                str(skipped.path),
                "skipped",
                (
                    Finding(
                        "deployment-skipped",
                        "warning",
                        skipped.reason,
                        "put the program's tokenizer next to it",
                        (name,),
                    ),
                ),
            )
        )
    reports += [_archive_report(p, target) for p in _archives_under(target)]
    if not reports:
        raise InputError(
            "no ExecuTorch program (.pte) or .etm archive found under this folder",
            path=target,
            hint="diagnose takes a legacy deployment folder, a .pte, an .etm archive or a tree of them",
        )
    reports.sort(key=lambda r: (SEVERITY_RANK[r.worst] if r.worst else 3, r.name))
    return DiagnoseReport(str(target), tuple(reports), checks_skipped=skipped_checks)


__all__ = [
    "SCHEMA_VERSION",
    "DeploymentReport",
    "DiagnoseReport",
    "diagnose_archive",
    "diagnose_path",
    "diagnose_view",
    "merge_findings",
    "registered_backends",
    "run_checks",
    "subject_of_view",
]
