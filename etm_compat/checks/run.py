"""Running the checks: every subject-level check in a stable order, and merging findings."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from etm_compat.checks.program import check_backends, check_program, check_weights
from etm_compat.checks.subject import Subject
from etm_compat.checks.template import check_template, render_all, template_end_of_turn
from etm_compat.checks.tokens import (
    check_eos,
    check_runner_tokenizer,
    check_special_ids,
    check_vocab,
    end_of_turn_id,
)
from etm_compat.findings import Finding
from etm_compat.prompt.families import Family, load_registry

log = logging.getLogger(__name__)


def family_of(family_id: str | None) -> Family | None:
    """The registry family with this id, or None (unknown ids are not an error here)."""
    return load_registry().get(family_id) if family_id else None


def run_checks(s: Subject, *, registered_backends: frozenset[str] | None = None) -> list[Finding]:
    """Every subject-level check, in a stable order; none stops another."""
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


def registered_backends() -> frozenset[str] | None:
    """Backends the installed ExecuTorch runtime registers; None when it is not installed.

    Only ``diagnose(runtime=True)`` calls this.
    """
    try:
        # Lazy: importing executorch loads torch (seconds); only the --runtime check needs it.
        from executorch.runtime import Runtime
    except ImportError:
        log.info("executorch is not installed: backend check skipped")
        return None
    names = Runtime.get().backend_registry.registered_backend_names
    return frozenset(str(n) for n in names)


__all__ = ["family_of", "merge_findings", "registered_backends", "run_checks"]
