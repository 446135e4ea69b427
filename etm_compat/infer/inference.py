"""Evidence-based inference: what a legacy deployment *is*, with provenance and confidence.

A legacy folder never says its family, chat template, BOS/EOS or sampling defaults in one place.
:func:`infer` reads every source there is (shipped template, HF configs, the export_llm yaml,
Meta ``params.json``, the ``.pte`` constant methods, the tokenizer, file names), records what each
one says as :class:`Evidence`, keeps disagreements as :class:`Conflict` records and problems as
findings, and resolves one :class:`Inference`. Nothing is guessed silently: an unknown model ends
with ``family_id=None``, confidence ``"none"`` and a ``family-unknown`` finding.

>>> from etm_compat.legacy.deployment import Deployment
>>> result = infer(Deployment(root, root / "model.pte", "hf_style", ...))  # doctest: +SKIP
>>> result.family_id, result.family_confidence, result.stop_token_ids  # doctest: +SKIP
('qwen2_5', 'high', (0, 2))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from etm_compat.errors import EtmError
from etm_compat.findings import Confidence, Finding
from etm_compat.formats.configs import read_config
from etm_compat.formats.pte import PteInfo, read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.infer import fields as infer_fields
from etm_compat.infer.family import VoteBox, decide_family
from etm_compat.infer.records import (
    Conflict,
    Evidence,
    Ledger,
    jsonable,
)
from etm_compat.infer.tokens import TokenInputs, infer_tokens
from etm_compat.legacy.deployment import Deployment
from etm_compat.prompt.families import load_registry

#: File name each config role gets in evidence when the caller gives none.
DEFAULT_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "tokenizer_config": "tokenizer_config.json",
        "generation_config": "generation_config.json",
        "config": "config.json",
        "chat_template": "chat_template.jinja",
        "export_config": "export_config.yaml",
        "params": "params.json",
        "special_tokens_map": "special_tokens_map.json",
    }
)


@dataclass(frozen=True)
class Inference:
    """The resolved configuration of one deployment, every field with its evidence."""

    family_id: str | None
    family_confidence: Confidence
    family_evidence: tuple[Evidence, ...]
    family_alternatives: tuple[str, ...]
    chat_template: str | None
    chat_template_source: str | None
    prompt_format: Mapping[str, Any] | None
    bos_id: int | None
    bos_token: str | None
    eos_ids: tuple[int, ...]
    stop_token_ids: tuple[int, ...]
    stop_token_sources: Mapping[int, tuple[str, ...]]
    num_bos: int
    num_eos: int
    generation: Mapping[str, float | int]
    max_seq_len: int | None
    max_context_len: int | None
    evidence: tuple[Evidence, ...]
    conflicts: tuple[Conflict, ...]
    findings: tuple[Finding, ...]
    #: The special-token strings the chat template sees (transformers' ``special_tokens_map``):
    #: the deployment's configs, else the tokenizer's own, else the family's.
    special_tokens_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON-ready values (evidence, conflicts and findings included)."""
        return {
            "family_id": self.family_id,
            "family_confidence": self.family_confidence,
            "family_evidence": [e.to_json() for e in self.family_evidence],
            "family_alternatives": list(self.family_alternatives),
            "chat_template": self.chat_template,
            "chat_template_source": self.chat_template_source,
            "prompt_format": jsonable(self.prompt_format),
            "bos_id": self.bos_id,
            "bos_token": self.bos_token,
            "special_tokens_map": dict(self.special_tokens_map),
            "eos_ids": list(self.eos_ids),
            "stop_token_ids": list(self.stop_token_ids),
            "stop_token_sources": {str(k): list(v) for k, v in self.stop_token_sources.items()},
            "num_bos": self.num_bos,
            "num_eos": self.num_eos,
            "generation": dict(self.generation),
            "max_seq_len": self.max_seq_len,
            "max_context_len": self.max_context_len,
            "evidence": [e.to_json() for e in self.evidence],
            "conflicts": [c.to_json() for c in self.conflicts],
            "findings": [f.to_json() for f in self.findings],
        }

    def metadata_fields(self) -> dict[str, Any]:
        """The fields an archive's metadata.json takes from inference."""
        generation: dict[str, Any] = {
            "num_bos": self.num_bos,
            "num_eos": self.num_eos,
            "stop_token_ids": list(self.stop_token_ids),
        }
        generation.update(self.generation)
        generation["max_seq_len"] = self.max_seq_len
        generation["max_context_len"] = self.max_context_len
        return {
            "family": {
                "id": self.family_id,
                "confidence": self.family_confidence,
                "evidence": [e.to_json() for e in self.family_evidence],
                "alternatives": list(self.family_alternatives),
            },
            "chat_template": self.chat_template,
            "chat_template_source": self.chat_template_source,
            "prompt_format": jsonable(self.prompt_format),
            "generation": generation,
        }


def infer(
    deployment: Deployment,
    *,
    pte: PteInfo | None = None,
    tokenizer: TokenizerInfo | None = None,
    family_override: str | None = None,
    chat_template_override: str | None = None,
) -> Inference:
    """Read a deployment's files (those not given) and infer its configuration.

    Files that cannot be read become error findings and inference goes on without them; an
    unknown ``family_override`` raises :class:`~etm_compat.errors.UsageError`.

    >>> infer(deployment, family_override="qwen3").family_confidence  # doctest: +SKIP
    'high'
    """
    read_errors: list[Finding] = []

    def rel(path: Path) -> str:
        try:
            return os.path.relpath(path, deployment.root)
        except ValueError:  # another drive on Windows
            return str(path)

    def failed(path: Path, exc: EtmError) -> None:
        read_errors.append(
            Finding(
                "input-unreadable",
                "error",
                f"not used for inference: {exc}",
                exc.hint,
                (rel(path),),
            )
        )

    if pte is None:
        try:
            pte = read_pte(deployment.program)
        except EtmError as exc:
            failed(deployment.program, exc)
    configs: dict[str, Any] = {}
    names: dict[str, str] = {}
    for role, path in deployment.configs.items():
        try:
            configs[role] = read_config(role, path)
            names[role] = rel(path)
        except EtmError as exc:
            failed(path, exc)
    if tokenizer is None and deployment.tokenizer is not None:
        try:
            tokenizer = read_tokenizer(
                deployment.tokenizer,
                config_path=deployment.configs.get("tokenizer_config"),
                special_tokens_map_path=deployment.configs.get("special_tokens_map"),
                check_runner=False,
            )
        except EtmError as exc:
            failed(deployment.tokenizer, exc)
    template = (chat_template_override, "override") if chat_template_override is not None else None
    result = infer_from_parts(
        pte=pte,
        tokenizer=tokenizer,
        configs=configs,
        template=template,
        file_names=[p.name for p in deployment.sources],
        root=deployment.root,
        family_override=family_override,
        config_names=names,
    )
    return replace(result, findings=(*read_errors, *result.findings))


def infer_from_parts(
    *,
    pte: PteInfo | None,
    tokenizer: TokenizerInfo | None,
    configs: Mapping[str, Any],
    template: tuple[str, str] | None = None,
    file_names: Sequence[str] = (),
    root: Path | None = None,
    family_override: str | None = None,
    config_names: Mapping[str, str] | None = None,
) -> Inference:
    """Infer from already-read parts: ``configs`` maps a role to its parsed content.

    ``template`` is ``(text, source)`` of a template that wins over any in ``configs`` (an
    override); ``config_names`` gives each role's file name for evidence (defaults:
    :data:`DEFAULT_NAMES`); ``root`` makes the tokenizer and program paths relative.
    """
    registry = load_registry()
    ledger = Ledger()
    names = {**DEFAULT_NAMES, **(config_names or {})}
    tok_source = _source_name(tokenizer.path, root) if tokenizer is not None else "tokenizer"
    pte_source = _source_name(pte.path, root) if pte is not None else "model.pte"

    shipped = (
        template if template is not None else infer_fields.shipped_template(configs, names, ledger)
    )
    box = VoteBox(registry, ledger)
    template_family = box.template(*shipped) if shipped is not None else None
    for role, reader in (
        ("config", box.hf_config),
        ("export_config", box.export_config),
        ("params", box.params),
    ):
        value = configs.get(role)
        if isinstance(value, Mapping):
            reader(value, names[role])
    if tokenizer is not None:
        box.tokenizer(tokenizer, tok_source)
    if pte is not None:
        box.pte(pte, pte_source)
    box.file_names(file_names)
    decision = decide_family(
        registry, box.votes, ledger, override=family_override, vetoes=box.vetoes
    )
    family = registry[decision.family_id] if decision.family_id is not None else None

    chat_template, template_source = infer_fields.choose_template(
        shipped, template_family, family, ledger
    )
    tokens = infer_tokens(
        TokenInputs(
            tokenizer,
            tok_source,
            pte,
            pte_source,
            configs,
            names,
            family,
            chat_template,
            template_source,
        ),
        ledger,
    )
    special_tokens = infer_fields.template_tokens(
        configs,
        names,
        {"bos_token": tokens.bos_token, "eos_token": tokenizer.eos_token if tokenizer else None},
        tok_source,
        family,
        ledger,
    )
    prompt_format = infer_fields.prompt_format(chat_template, template_source, special_tokens, ledger)
    generation = infer_fields.generation(configs, names, family, ledger)
    max_seq_len, max_context_len = infer_fields.lengths(pte, pte_source, configs, names, ledger)
    return Inference(
        family_id=decision.family_id,
        family_confidence=decision.confidence,
        family_evidence=decision.evidence,
        family_alternatives=decision.alternatives,
        chat_template=chat_template,
        chat_template_source=template_source,
        prompt_format=prompt_format,
        bos_id=tokens.bos_id,
        bos_token=tokens.bos_token,
        eos_ids=tokens.eos_ids,
        stop_token_ids=tokens.stop_token_ids,
        stop_token_sources=MappingProxyType(dict(tokens.stop_token_sources)),
        num_bos=tokens.num_bos,
        num_eos=tokens.num_eos,
        generation=MappingProxyType(generation),
        max_seq_len=max_seq_len,
        max_context_len=max_context_len,
        evidence=tuple(ledger.evidence),
        conflicts=tuple(ledger.conflicts),
        findings=tuple(ledger.findings),
        special_tokens_map=MappingProxyType(special_tokens),
    )


def _source_name(path: str, root: Path | None) -> str:
    if root is not None:
        try:
            rel = os.path.relpath(path, root)
        except ValueError:
            rel = path
        if not rel.startswith(".."):
            return rel
    return Path(path).name


__all__ = [
    "DEFAULT_NAMES",
    "Conflict",
    "Evidence",
    "Inference",
    "infer",
    "infer_from_parts",
]
