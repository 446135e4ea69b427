"""BOS, EOS and the stop set: every source's ids, with provenance, and the legacy-default trap.

Rules (see docs/research: executorch-format.md sections 4-5, anchors.md):

* BOS: the tokenizer's (what runners since v0.7 use), then ``tokenizer_config.json``
  ``bos_token``, ``config.json``/``generation_config.json`` ``bos_token_id``, the export
  config's and the program's ``get_bos_id``, and last the registry family's ``bos_token``.
* The stop set is the union of every source: generation_config ``eos_token_id`` (int or list),
  config.json ``eos_token_id``, the tokenizer's eos, the program's ``get_eos_ids`` (and legacy
  ``get_eos_id``), and the family's end-of-turn/stop tokens resolved through the tokenizer.
* ``get_bos_id=1``/``get_eos_ids=[2]`` are what export tools v0.4-v1.0 wrote by default; when
  the tokenizer disagrees they are excluded and reported (``legacy-default-bos-eos``).
* ``num_bos`` is 0 when the template emits the BOS itself (no double BOS), else the family's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from etm_compat.constants import LEGACY_DEFAULT_BOS_ID, LEGACY_DEFAULT_EOS_IDS
from etm_compat.errors import EtmError
from etm_compat.formats.pte import PteInfo
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.infer.records import Ledger, as_int, as_int_list
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat
from etm_compat.prompt.families import Family

_BOS_VARIABLE: Final = re.compile(r"\bbos_token\b")
#: End-of-generation token texts llama.cpp adds to its stop set by text (anchors.md, section 1).
#: One written literally in a template ends a turn there; it joins the stop set when the
#: tokenizer has it as one token.
EOG_TEXTS: Final = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
)  # fmt: skip


@dataclass(frozen=True)
class TokenResult:
    """What :func:`infer_tokens` resolved (its evidence and findings are in the ledger)."""

    bos_id: int | None
    bos_token: str | None
    eos_ids: tuple[int, ...]
    stop_token_ids: tuple[int, ...]
    stop_token_sources: Mapping[int, tuple[str, ...]]
    num_bos: int
    num_eos: int


@dataclass(frozen=True)
class TokenInputs:
    """Everything the token rules read; ``names`` maps a config role to its file name."""

    tokenizer: TokenizerInfo | None
    tokenizer_source: str
    pte: PteInfo | None
    pte_source: str
    configs: Mapping[str, Any]
    names: Mapping[str, str]
    family: Family | None
    template: str | None
    template_source: str | None = None


def token_text(value: Any) -> str | None:
    """A special-token entry of tokenizer_config.json: ``"<s>"`` or ``{"content": "<s>"}``."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def export_metadata(export: Any) -> dict[str, Any]:
    """The export config's ``base.metadata`` (a JSON string, or already a mapping)."""
    base = export.get("base") if isinstance(export, Mapping) else None
    raw = base.get("metadata") if isinstance(base, Mapping) else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested past the interpreter's stack
            return {}
    return dict(raw) if isinstance(raw, Mapping) else {}


class _TokenRules:
    def __init__(self, inputs: TokenInputs, ledger: Ledger) -> None:
        self.i = inputs
        self.ledger = ledger
        self.tok = inputs.tokenizer

    @property
    def template_source(self) -> str:
        return self.i.template_source or "chat_template"

    def cfg(self, role: str) -> Mapping[str, Any]:
        value = self.i.configs.get(role)
        return value if isinstance(value, Mapping) else {}

    def name(self, role: str) -> str:
        return self.i.names.get(role, role)

    def resolve(self, text: str | None) -> int | None:
        return self.tok.token_id(text) if self.tok is not None and text else None

    def text_of(self, token_id: int | None) -> str | None:
        if self.tok is None or token_id is None:
            return None
        if self.tok.bos_id == token_id and self.tok.bos_token:
            return self.tok.bos_token
        if self.tok.eos_id == token_id and self.tok.eos_token:
            return self.tok.eos_token
        return next((t for t, i in self.tok.special_tokens.items() if i == token_id), None)

    # --- program / export-config values, with the legacy-default check ----------------------
    def program_values(self, cm: Mapping[str, Any], source: str) -> tuple[int | None, list[int]]:
        """(bos, eos ids) a program or export config declares, minus suspect legacy defaults."""
        bos = as_int(cm.get("get_bos_id"))
        eos = as_int_list(cm.get("get_eos_ids"))
        key = "get_eos_ids"
        if eos is None:
            eos, key = as_int_list(cm.get("get_eos_id")), "get_eos_id"
        if bos is not None:
            self.ledger.note(source, "bos_id", bos, "get_bos_id")
        if eos is not None:
            self.ledger.note(source, "eos_ids", eos, key)
        if self.is_suspect(bos, eos):
            assert self.tok is not None
            self.ledger.note(
                source,
                "eos_ids",
                eos,
                f"get_bos_id={bos}/{key}={eos} look like the v0.4-v1.0 export defaults; "
                "excluded because the tokenizer disagrees",
            )
            self.ledger.find(
                "legacy-default-bos-eos",
                "warning",
                f"{source} declares get_bos_id={bos} and {key}={eos}, the values export tools "
                f"v0.4-v1.0 wrote by default, but the tokenizer's bos is {self.tok.bos_id} and "
                f"its eos is {self.tok.eos_id}; they are left out of the stop set",
                hint="the archive uses the tokenizer's ids; to fix the program itself re-export "
                "it with --metadata giving the real get_bos_id/get_eos_ids",
                paths=(source,),
            )
            return None, []
        return bos, eos or []

    def is_suspect(self, bos: int | None, eos: list[int] | None) -> bool:
        if self.tok is None or (bos is None and eos is None):
            return False
        if bos not in (None, LEGACY_DEFAULT_BOS_ID) or eos not in (
            None,
            list(LEGACY_DEFAULT_EOS_IDS),
        ):
            return False
        bos_wrong = bos is not None and self.tok.bos_id != LEGACY_DEFAULT_BOS_ID
        eos_wrong = eos is not None and self.tok.eos_id not in LEGACY_DEFAULT_EOS_IDS
        return bos_wrong or eos_wrong

    def bos_is_eos_copy(self, tc: Mapping[str, Any]) -> bool:
        """An HF tokenizer with no bos of its own: the runner's reader copied the eos into it.

        pytorch_tokenizers' HFTokenizer uses the eos as bos when it finds none; a tokenizer
        whose config names the same token as both (GPT-2 style) is not a copy.
        """
        tok = self.tok
        return (
            tok is not None
            and tok.format == "hf_json"
            and tok.bos_id is not None
            and tok.bos_id == tok.eos_id
            and token_text(tc.get("bos_token")) != tok.bos_token
        )

    # --- the rules -------------------------------------------------------------------------
    def run(self) -> TokenResult:
        tok, fam = self.tok, self.i.family
        tc, gc, hc = self.cfg("tokenizer_config"), self.cfg("generation_config"), self.cfg("config")
        meta = export_metadata(self.i.configs.get("export_config"))
        cm: Mapping[str, Any] = self.i.pte.constant_methods if self.i.pte is not None else {}
        meta_bos, meta_eos = (
            self.program_values(meta, self.name("export_config")) if meta else (None, [])
        )
        pte_bos, pte_eos = self.program_values(cm, self.i.pte_source) if cm else (None, [])

        bos_candidates: list[tuple[int, str]] = []
        eos_candidates: list[tuple[int, str]] = []
        extra_stops: list[tuple[int, str]] = []
        if tok is not None:
            if self.bos_is_eos_copy(tc):
                self.ledger.note(
                    self.i.tokenizer_source,
                    "bos_id",
                    None,
                    "no BOS of its own: the runner's HF tokenizer reuses the eos as bos",
                )
            elif tok.bos_id is not None:
                bos_candidates.append((tok.bos_id, self.i.tokenizer_source))
            if tok.eos_id is not None:
                eos_candidates.append((tok.eos_id, self.i.tokenizer_source))
        for key, into in (("bos_token", bos_candidates), ("eos_token", eos_candidates)):
            text = token_text(tc.get(key))
            found = self.resolve(text)
            if found is not None:
                into.append((found, self.name("tokenizer_config")))
                self.ledger.note(self.name("tokenizer_config"), key, found, f"{key} {text!r}")
        for role, cfg in (("config", hc), ("generation_config", gc)):
            bos = as_int(cfg.get("bos_token_id"))
            if bos is not None:
                bos_candidates.append((bos, self.name(role)))
                self.ledger.note(self.name(role), "bos_id", bos, "bos_token_id")
            for eos in as_int_list(cfg.get("eos_token_id")) or []:
                extra_stops.append((eos, self.name(role)))
                self.ledger.note(self.name(role), "stop_token_ids", eos, "eos_token_id")
        for bos, source in ((meta_bos, self.name("export_config")), (pte_bos, self.i.pte_source)):
            if bos is not None:
                bos_candidates.append((bos, source))
        eos_candidates += [(e, self.name("export_config")) for e in meta_eos]
        eos_candidates += [(e, self.i.pte_source) for e in pte_eos]
        if fam is not None and tok is not None:
            registry = f"registry:{fam.id}"
            fam_bos = self.resolve(fam.bos_token)
            if fam_bos is not None and not bos_candidates:
                bos_candidates.append((fam_bos, registry))
                self.ledger.note(registry, "bos_id", fam_bos, f"family bos_token {fam.bos_token!r}")
            wanted = [fam.eos_token, fam.end_of_turn, *fam.stop_tokens]
            for text in dict.fromkeys(t for t in wanted if t):
                found = self.resolve(text)
                if found is not None:
                    extra_stops.append((found, registry))
                    self.ledger.note(registry, "stop_token_ids", found, f"stop token {text!r}")
                elif text == fam.end_of_turn:
                    self.ledger.find(
                        "stop-token-unresolved",
                        "warning",
                        f"{fam.id}'s end-of-turn token {text!r} is not in the tokenizer",
                        hint="check that the tokenizer belongs to this model, or pass --family",
                        paths=(self.i.tokenizer_source,),
                    )

        if self.i.template is not None and tok is not None:
            for text in EOG_TEXTS:
                found = self.resolve(text) if text in self.i.template else None
                if found is not None:
                    extra_stops.append((found, self.template_source))
                    self.ledger.note(
                        self.template_source, "stop_token_ids", found, f"template writes {text!r}"
                    )

        bos_id = bos_candidates[0][0] if bos_candidates else None
        if len({b for b, _ in bos_candidates}) > 1:
            self.ledger.compare("bos_id", bos_candidates)
            self.ledger.find(
                "bos-conflict",
                "warning",
                "sources disagree about the BOS id: "
                + ", ".join(f"{s}={b}" for b, s in bos_candidates)
                + f"; using {bos_id} from {bos_candidates[0][1]}",
                hint="the runner takes the BOS from the tokenizer; fix the other files or ignore",
            )
        bos_token = self.text_of(bos_id) or (
            token_text(tc.get("bos_token")) if bos_id is not None else None
        )
        if bos_id is not None:
            self.ledger.note(bos_candidates[0][1], "bos_id", bos_id, "chosen BOS")

        eos_ids = tuple(dict.fromkeys(e for e, _ in eos_candidates))
        stops, sources = self.stop_set([*eos_candidates, *extra_stops])
        num_bos = self.num_bos(bos_id, bos_token)
        self.ledger.note("rules", "num_eos", 0, "no family appends EOS to a prompt")
        return TokenResult(bos_id, bos_token, eos_ids, stops, sources, num_bos, 0)

    def stop_set(
        self, pairs: list[tuple[int, str]]
    ) -> tuple[tuple[int, ...], dict[int, tuple[str, ...]]]:
        limits = [self.tok.vocab_size] if self.tok is not None else []
        cm = self.i.pte.constant_methods if self.i.pte is not None else {}
        pte_vocab = as_int(cm.get("get_vocab_size"))
        if pte_vocab is not None:
            limits.append(pte_vocab)
        limit = max(limits) if limits else None
        sources: dict[int, list[str]] = {}
        for token_id, source in pairs:
            if token_id < 0 or (limit is not None and token_id >= limit):
                self.ledger.find(
                    "stop-token-out-of-range",
                    "warning",
                    f"{source} names stop token {token_id}, outside the vocabulary (size {limit})",
                    hint="the id is left out of the stop set; fix the file",
                    paths=(source,),
                )
                continue
            into = sources.setdefault(token_id, [])
            if source not in into:
                into.append(source)
        if not sources:
            self.ledger.find(
                "no-stop-tokens",
                "warning",
                "no source gives an end-of-sequence token; generation will only stop at the length limit",
                hint="ship the tokenizer_config.json/generation_config.json, or pass --family",
            )
        ordered = tuple(sorted(sources))
        return ordered, {i: tuple(sources[i]) for i in ordered}

    def num_bos(self, bos_id: int | None, bos_token: str | None) -> int:
        fam, template = self.i.family, self.i.template
        if bos_id is None:
            return self.decide_bos(0, "rules", "the tokenizer has no BOS token")
        if template is not None and _BOS_VARIABLE.search(template):
            return self.decide_bos(0, self.template_source, "the template emits bos_token itself")
        if template is not None and bos_token and self.render_starts_with(template, bos_token):
            return self.decide_bos(
                0, self.template_source, f"the rendered template starts with {bos_token!r}"
            )
        if fam is not None:
            registry = f"registry:{fam.id}"
            if (
                fam.num_bos == 0
                and fam.bos_token
                and template is not None
                and template != fam.chat_template
                and _BOS_VARIABLE.search(fam.chat_template)
            ):
                # The family's 0 relies on its own template emitting the BOS; this one does not.
                return self.decide_bos(
                    1, registry, "the family's template emits the BOS, the one in use does not"
                )
            return self.decide_bos(fam.num_bos, registry, "the family's num_bos")
        add_bos = self.cfg("tokenizer_config").get("add_bos_token")
        if isinstance(add_bos, bool):
            return self.decide_bos(
                int(add_bos), self.name("tokenizer_config"), f"add_bos_token {add_bos}"
            )
        return self.decide_bos(1, "rules", "the tokenizer has a BOS (SentencePiece/Llama 2 style)")

    def decide_bos(self, value: int, source: str, detail: str) -> int:
        self.ledger.note(source, "num_bos", value, detail)
        return value

    def render_starts_with(self, template: str, bos_token: str) -> bool:
        eos = (self.tok.eos_token if self.tok is not None else None) or ""
        for messages in STANDARD_CONVERSATIONS.values():
            try:
                text = render_chat(
                    template,
                    messages,
                    add_generation_prompt=True,
                    bos_token=bos_token,
                    eos_token=eos,
                )
            except (EtmError, ValueError, TypeError):
                continue
            return text.startswith(bos_token)
        return False


def infer_tokens(inputs: TokenInputs, ledger: Ledger) -> TokenResult:
    """Resolve BOS, EOS, the stop set and num_bos/num_eos; record everything in ``ledger``."""
    return _TokenRules(inputs, ledger).run()


__all__ = [
    "EOG_TEXTS",
    "TokenInputs",
    "TokenResult",
    "export_metadata",
    "infer_tokens",
    "token_text",
]
