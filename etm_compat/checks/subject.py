"""What the diagnose checks read: :class:`Subject`, one deployment or archive reduced to plain
values, and the small helpers every check module shares.

The checks themselves are in :mod:`etm_compat.checks.tokens` (tokenizer vs model),
:mod:`etm_compat.checks.program` (program, weights, backends), :mod:`etm_compat.checks.template`
and :mod:`etm_compat.checks.archive`; :mod:`etm_compat.checks.run` runs them in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from etm_compat.findings import Finding, Severity
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.prompt.families import Family

SubjectKind = Literal["deployment", "archive"]


@dataclass(frozen=True)
class Subject:
    """What the checks look at, for one deployment or one archive.

    Labels (``tokenizer_label``...) are the file or member names findings cite. ``stop_ids``
    and ``num_bos`` are what the *packed* configuration uses (inference for a deployment,
    metadata.json for an archive); the program's own ``get_eos_ids`` is in ``constant_methods``.
    ``template_from_files`` is False when the template is a registry guess, not shipped.
    """

    kind: SubjectKind
    tokenizer: TokenizerInfo | None
    tokenizer_label: str
    program_label: str
    constant_methods: Mapping[str, Any]
    external_keys: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    weights: tuple[tuple[str, frozenset[str]], ...] = ()
    model_vocab: tuple[tuple[int, str], ...] = ()
    config_ids: tuple[tuple[str, int, str], ...] = ()
    template: str | None = None
    template_label: str = "chat template"
    template_from_files: bool = True
    family: Family | None = None
    stop_ids: tuple[int, ...] = ()
    num_bos: int = 0
    add_bos_token: bool | None = None
    has_tokenizer_config: bool = False
    prior_codes: frozenset[str] = field(default_factory=frozenset)


def as_int(value: Any) -> int | None:
    """An int that is not a bool, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def finding(code: str, severity: Severity, message: str, hint: str, *paths: str) -> Finding:
    """A finding citing each path once, in order."""
    return Finding(code, severity, message, hint, tuple(dict.fromkeys(paths)))


__all__ = ["Subject", "SubjectKind", "as_int", "finding"]
