"""Chat-template checks: does it render, emit tokens the tokenizer knows, end turns, double BOS?

The template is rendered (sandboxed, bounded: :mod:`etm_compat.prompt.chat`) over the standard
conversations with the tokenizer's own bos/eos text; the checks read the rendered text, so only
markers the template really emits count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from etm_compat.checks.subject import Subject, as_int, finding
from etm_compat.errors import EtmError
from etm_compat.findings import Finding
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat

_FW_BAR: Final = "\uff5c"  # the fullwidth bar of DeepSeek's markers
#: Special-looking markers: ``<|...|>``, DeepSeek's fullwidth-bar form, ``<start_of_turn>``.
_MARKERS: Final = re.compile(
    rf"<\|[^|<>\s]{{1,60}}\|>|<{_FW_BAR}[^{_FW_BAR}<>\s]{{1,60}}{_FW_BAR}>|<[a-z]+(?:_[a-z]+)+>"
)
#: Mistral-style control tokens; plain text for tokenizers without bracketed specials (Llama 2).
_BRACKETS: Final = re.compile(r"\[/?[A-Z][A-Z_]{1,30}\]")
_ASSISTANT_TEXT: Final = "The capital of France is Paris."


@dataclass(frozen=True)
class Rendered:
    """The template rendered over the standard conversations (failures kept by name)."""

    texts: dict[str, str]
    failures: dict[str, str]
    bos_token: str | None


def render_all(s: Subject) -> Rendered | None:
    """Render every standard conversation; None without a template."""
    if s.template is None:
        return None
    tok = s.tokenizer
    bos = tok.bos_token if tok is not None else None
    eos = tok.eos_token if tok is not None else None
    texts: dict[str, str] = {}
    failures: dict[str, str] = {}
    for name, messages in STANDARD_CONVERSATIONS.items():
        try:
            texts[name] = render_chat(
                s.template,
                messages,
                add_generation_prompt=messages[-1]["role"] == "user",
                bos_token=bos or "",
                eos_token=eos or "",
            )
        except (EtmError, ValueError, TypeError) as exc:
            failures[name] = str(exc)
    return Rendered(texts, failures, bos)


def template_end_of_turn(s: Subject, rendered: Rendered | None) -> str | None:
    """The special token the template writes right after an assistant reply, if any."""
    tok = s.tokenizer
    if rendered is None or tok is None:
        return None
    known = sorted({*tok.special_tokens, *(t for t in (tok.eos_token,) if t)}, key=len, reverse=True)
    for name in ("assistant_last", "system_assistant_last", "multi_turn"):
        text = rendered.texts.get(name)
        if text is None or _ASSISTANT_TEXT not in text:
            continue
        after = text.split(_ASSISTANT_TEXT, 1)[1].lstrip(" ")
        found = next((t for t in known if after.startswith(t)), None)
        if found is not None:
            return found
    return None


def check_template(s: Subject, rendered: Rendered | None, eot_text: str | None) -> list[Finding]:
    """Render failures, unknown special tokens, a missing end of turn, double BOS."""
    if rendered is None or s.tokenizer is None:
        return []
    tok = s.tokenizer
    out: list[Finding] = []
    label = s.template_label
    if rendered.failures and "template-render-failed" not in s.prior_codes:
        name, error = next(iter(rendered.failures.items()))
        out.append(
            finding(
                "template-render-failed",
                "warning",
                f"the chat template fails on {len(rendered.failures)} of "
                f"{len(STANDARD_CONVERSATIONS)} standard conversations (first: {name}: {error})",
                "fix the template, or pass --chat-template / --family",
                label,
            )
        )
    texts = list(rendered.texts.values())
    if not texts:
        return out
    joined = "\n".join(texts)
    markers = set(_MARKERS.findall(joined))
    if any(_BRACKETS.fullmatch(t) for t in tok.special_tokens):
        markers |= set(_BRACKETS.findall(joined))
    unknown = sorted(m for m in markers if tok.token_id(m) is None)
    if unknown:
        out.append(
            finding(
                "template-token-not-in-vocab",
                "error" if s.template_from_files else "warning",
                f"the chat template emits {', '.join(repr(m) for m in unknown)}, which the "
                "tokenizer does not have as a token: the model would see it as plain text",
                "the template and the tokenizer belong to different models; ship the model's own "
                "template (or pass --chat-template / --family)",
                label,
                s.tokenizer_label,
            )
        )
    ends = [t for t in (eot_text, s.family.end_of_turn if s.family else None, tok.eos_token) if t]
    ends = [e for e in ends if tok.token_id(e) is not None]
    if s.template_from_files and ends and eot_text is None and not any(e in joined for e in ends):
        out.append(
            finding(
                "template-no-end-of-turn",
                "warning",
                "the chat template never emits an end-of-turn or eos token ("
                + ", ".join(repr(e) for e in dict.fromkeys(ends))
                + ") after a reply: the model never learns where its turn ends",
                "use the model's published template",
                label,
            )
        )
    bos = rendered.bos_token
    if bos and all(t.startswith(bos) for t in texts):
        legacy_n_bos = as_int(s.constant_methods.get("get_n_bos")) or 0
        reasons = []
        if s.num_bos > 0:
            reasons.append(f"num_bos={s.num_bos}")
        if s.kind == "deployment" and legacy_n_bos > 0:
            reasons.append(f"{s.program_label} get_n_bos={legacy_n_bos}")
        if s.kind == "deployment" and s.add_bos_token:
            reasons.append("tokenizer_config.json add_bos_token=true")
        if reasons:
            out.append(
                finding(
                    "double-bos",
                    "error" if s.kind == "archive" else "warning",
                    f"the chat template already starts every prompt with {bos!r} and "
                    f"{' and '.join(reasons)} adds another: prompts would start with two BOS tokens",
                    "set num_bos to 0 when the template emits the BOS (pack records num_bos=0)",
                    label,
                    *((s.program_label,) if legacy_n_bos else ()),
                )
            )
    return out


__all__ = ["Rendered", "check_template", "render_all", "template_end_of_turn"]
