"""Field rules of inference besides family and tokens: template, sampling, sequence lengths.

Helpers of :mod:`etm_compat.infer.inference`; each records its evidence and findings in the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from etm_compat.errors import EtmError
from etm_compat.formats.configs import template_from_config
from etm_compat.formats.pte import PteInfo
from etm_compat.infer.records import Ledger, as_int, as_number
from etm_compat.prompt.families import Family
from etm_compat.prompt.substitution import derive_prompt_format

#: Sampling settings taken from generation_config.json, else from the family.
GENERATION_KEYS: Final = ("temperature", "top_p", "top_k", "max_new_tokens")
#: Where a shipped template is looked for, strongest first (transformers: files before the key).
TEMPLATE_ROLES: Final = ("chat_template", "tokenizer_config")
#: The special tokens transformers names on every tokenizer (``SPECIAL_TOKENS_ATTRIBUTES``).
NAMED_SPECIAL_TOKENS: Final = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)  # fmt: skip


def shipped_template(
    configs: Mapping[str, Any], names: Mapping[str, str], ledger: Ledger
) -> tuple[str, str] | None:
    found = [
        (text, names[role])
        for role in TEMPLATE_ROLES
        if (text := template_from_config(role, configs.get(role))) is not None
    ]
    for text, source in found:
        ledger.note(source, "chat_template", f"{len(text)} characters", "shipped chat template")
    if len({t for t, _ in found}) > 1:
        ledger.compare("chat_template", found)
        ledger.find(
            "template-conflict",
            "warning",
            f"the deployment ships different chat templates in {', '.join(s for _, s in found)}; "
            f"using the one in {found[0][1]}",
            hint="delete the stale one, or pass --chat-template",
            paths=[s for _, s in found],
        )
    return found[0] if found else None


def choose_template(
    shipped: tuple[str, str] | None,
    matched: str | None,
    family: Family | None,
    ledger: Ledger,
) -> tuple[str | None, str | None]:
    if shipped is not None:
        text, source = shipped
        label = (
            f"matches registry template {matched}" if matched else "matches no registry template"
        )
        ledger.note(source, "chat_template", matched, f"kept verbatim; {label}")
        if matched is None:
            ledger.find(
                "template-unrecognized",
                "info",
                f"the chat template from {source} matches no registry family exactly; kept verbatim",
                paths=(source,),
            )
        return text, source
    if family is not None and family.chat_template:
        source = f"registry:{family.id}"
        ledger.note(
            source, "chat_template", family.template_name, "no template shipped; the family's"
        )
        return family.chat_template, source
    return None, None


def _special_text(value: Any, *, typed: bool = False) -> str | None:
    """A special-token value as transformers reads it: a string, or an AddedToken's content
    (with ``typed``, only a serialised ``{"__type": "AddedToken", ...}`` counts)."""
    if isinstance(value, Mapping) and (not typed or value.get("__type") == "AddedToken"):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _declared_tokens(configs: Mapping[str, Any]) -> dict[str, tuple[str | None, str]]:
    """Every special token the configs declare: ``name -> (text, config role)``, text None when
    declared null.

    As transformers 5.x loads a tokenizer folder: the named tokens of tokenizer_config.json,
    overridden by special_tokens_map.json's unless the config has ``added_tokens_decoder``; and
    the model-specific ones (any other ``*_token`` key holding a token, the entries of an
    ``extra_special_tokens``/``additional_special_tokens`` object), where the config's string
    values and objects win over the rest.
    """
    tc = configs.get("tokenizer_config")
    config: Mapping[str, Any] = tc if isinstance(tc, Mapping) else {}
    stm = configs.get("special_tokens_map")
    special: Mapping[str, Any] = stm if isinstance(stm, Mapping) and "added_tokens_decoder" not in config else {}
    named: dict[str, tuple[str | None, str]] = {}
    found: dict[str, tuple[str | None, str]] = {}  # model-specific, found among other keys
    given: dict[str, tuple[str | None, str]] = {}  # model-specific, given explicitly
    for role, source in (("tokenizer_config", config), ("special_tokens_map", special)):
        for key, value in source.items():
            if key in NAMED_SPECIAL_TOKENS:
                named[key] = (_special_text(value), role)
            elif key.endswith("_token"):
                typed = _special_text(value, typed=True)
                if role == "tokenizer_config" and isinstance(value, str):
                    given[key] = (value, role)
                elif (text := typed if role == "tokenizer_config" else _special_text(value)) is not None:
                    found[key] = (text, role)
        for key in ("additional_special_tokens", "extra_special_tokens"):
            extra = source.get(key)
            if isinstance(extra, Mapping):  # a named object (a list names no variables)
                for name, value in extra.items():
                    if isinstance(name, str) and (text := _special_text(value, typed=True)) is not None:
                        given[name] = (text, role)
    return {**named, **found, **given}


def template_tokens(
    configs: Mapping[str, Any],
    names: Mapping[str, str],
    own: Mapping[str, str | None],
    own_source: str,
    family: Family | None,
    ledger: Ledger,
) -> dict[str, str]:
    """The special-token strings a chat template sees: transformers' ``special_tokens_map``.

    The tokens the deployment's configs declare, as transformers reads them (see
    :func:`_declared_tokens`; one declared null stays absent). Only when the configs declare
    none at all (a SentencePiece, tiktoken or llama2.c tokenizer, a bare tokenizer.json) does each
    name in ``own`` take the tokenizer's own text ``own[name]``, else the family registry's.
    """
    declared = _declared_tokens(configs)
    for name, (text, role) in declared.items():
        ledger.note(names[role], "special_tokens_map", text, f"{name} for the chat template")
    if declared:
        return {name: text for name, (text, _) in declared.items() if text is not None}
    tokens: dict[str, str] = {}
    for name, text in own.items():
        source = own_source
        if text is None and family is not None:
            text, source = getattr(family, name, None), f"registry:{family.id}"
        if text is not None:
            tokens[name] = text
            ledger.note(source, "special_tokens_map", text, f"{name} (no config names one)")
    return tokens


def prompt_format(
    template: str | None, source: str | None, tokens: Mapping[str, str], ledger: Ledger
) -> Mapping[str, Any] | None:
    """The template's substitution form, rendered with its special-token strings ``tokens``."""
    if template is None:
        return None
    try:
        derived = derive_prompt_format(
            template,
            bos_token=tokens.get("bos_token"),
            eos_token=tokens.get("eos_token"),
            special_tokens=tokens,
        )
    except (EtmError, ValueError, TypeError) as exc:
        ledger.find(
            "template-render-failed",
            "warning",
            f"the chat template could not be rendered: {exc}",
            hint="fix the template or pass --chat-template",
        )
        return None
    if derived is None:
        ledger.note(source or "chat_template", "prompt_format", None, "no exact substitution form")
        return None
    value = derived.to_json()
    ledger.note(source or "chat_template", "prompt_format", "derived", "substitution form")
    return MappingProxyType(dict(value))


def generation(
    configs: Mapping[str, Any], names: Mapping[str, str], family: Family | None, ledger: Ledger
) -> dict[str, float | int]:
    gc = configs.get("generation_config")
    gc = gc if isinstance(gc, Mapping) else {}
    defaults: Mapping[str, Any] = family.generation if family is not None else {}
    out: dict[str, float | int] = {}
    for key in GENERATION_KEYS:
        for value, source in ((gc.get(key), names["generation_config"]), (defaults.get(key), None)):
            number = as_number(value)
            if number is None:
                continue
            source = source or f"registry:{family.id if family else ''}"
            out[key] = number
            ledger.note(source, key, number, f"{key} from {source}")
            break
    return out


def lengths(
    pte: PteInfo | None,
    pte_source: str,
    configs: Mapping[str, Any],
    names: Mapping[str, str],
    ledger: Ledger,
) -> tuple[int | None, int | None]:
    cm: Mapping[str, Any] = pte.constant_methods if pte is not None else {}
    export = configs.get("export_config")
    section = export.get("export") if isinstance(export, Mapping) else None
    section = section if isinstance(section, Mapping) else {}
    results: list[int | None] = []
    for field_name, key, yaml_key in (
        ("max_seq_len", "get_max_seq_len", "max_seq_length"),
        ("max_context_len", "get_max_context_len", "max_context_length"),
    ):
        found = [
            (v, s)
            for v, s in (
                (as_int(cm.get(key)), pte_source),
                (as_int(section.get(yaml_key)), names["export_config"]),
            )
            if v is not None
        ]
        for value, source in found:
            ledger.note(
                source, field_name, value, key if source == pte_source else f"export.{yaml_key}"
            )
        if ledger.compare(field_name, found) is not None:
            ledger.find(
                "length-conflict",
                "warning",
                f"{field_name}: "
                + ", ".join(f"{s} says {v}" for v, s in found)
                + f"; using {found[0][0]}",
                hint="the program's value is what the runtime uses",
            )
        results.append(found[0][0] if found else None)
    max_seq_len, max_context_len = results
    if max_context_len is None and max_seq_len is not None and pte is not None:
        max_context_len = max_seq_len
        ledger.note("rules", "max_context_len", max_seq_len, "runner default: max_seq_len")
    return max_seq_len, max_context_len


__all__ = [
    "GENERATION_KEYS",
    "NAMED_SPECIAL_TOKENS",
    "TEMPLATE_ROLES",
    "choose_template",
    "generation",
    "lengths",
    "prompt_format",
    "shipped_template",
    "template_tokens",
]
