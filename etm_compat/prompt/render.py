"""The one renderer of a deployment's prompts, as text and as the token ids the runner feeds.

``etm-compat render`` and :meth:`etm_compat.Bundle.render` both call :func:`render_prompt` with
the metadata.json of an archive, or the metadata ``pack`` would write for a legacy folder. The
template sees the deployment's own special-token strings (``tokenizer.special_tokens_map``, as
transformers passes its tokenizer's), never the family registry's unless one is missing.

:func:`encode_prompt` turns the rendered text into what the ExecuTorch runner feeds the model:
``tokenizer.encode(prompt, num_bos, num_eos)`` in the runner's own library, pytorch_tokenizers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from etm_compat.errors import UsageError
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.runner import encode_with_runner
from etm_compat.prompt.chat import Message, render_chat
from etm_compat.prompt.families import get_family

#: The most BOS/EOS tokens the runner's ``encode(text, int8_t bos, int8_t eos)`` can add.
MAX_ADDED_TOKENS: Final = 127


def template_tokens(meta: Mapping[str, Any]) -> dict[str, str]:
    """The special-token variables ``meta`` gives a chat template (``bos_token``, ``eos_token``...).

    Archives written before ``tokenizer.special_tokens_map`` existed give their ``bos_token`` and
    first ``eos_tokens`` entry.
    """
    tokenizer = meta.get("tokenizer") or {}
    recorded = tokenizer.get("special_tokens_map")
    if isinstance(recorded, Mapping):
        return {k: v for k, v in recorded.items() if isinstance(k, str) and isinstance(v, str)}
    tokens = {}
    if isinstance(tokenizer.get("bos_token"), str):
        tokens["bos_token"] = tokenizer["bos_token"]
    eos = [t for t in tokenizer.get("eos_tokens") or [] if isinstance(t, str) and t]
    if eos:
        tokens["eos_token"] = eos[0]
    return tokens


def render_prompt(
    meta: Mapping[str, Any],
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    family: str | None = None,
    path: str | os.PathLike[str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    continue_final_message: bool | str = False,
    **template_vars: Any,
) -> str:
    """Render ``messages`` with the chat template and special-token strings ``meta`` records.

    ``family`` renders with that registry family's template instead (the deployment's special
    tokens still apply; the family's bos/eos fill only a missing one). ``tools``,
    ``documents``, ``continue_final_message`` and ``template_vars`` (``enable_thinking=False``...)
    are passed as transformers' ``apply_chat_template`` passes them; a variable not given keeps
    the template's default. ``path`` names the deployment in errors.
    """
    template = meta.get("chat_template")
    tokens = template_tokens(meta)
    if family is not None:
        fam = get_family(family)
        template = fam.chat_template
        for name, text in (("bos_token", fam.bos_token), ("eos_token", fam.eos_token)):
            if text is not None:
                tokens.setdefault(name, text)
    if not template:
        raise UsageError(
            "no chat template: none shipped, and the model family is unknown or has none (a base model)",
            path=path,
            hint="pass {family} (etm-compat families lists them) or {chat_template}",
        )
    return render_chat(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        special_tokens=tokens,
        tools=tools,
        documents=documents,
        continue_final_message=continue_final_message,
        **template_vars,
    )


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as the runner feeds it: ``ids[i]`` is the token whose text is ``pieces[i]``;
    ``special[i]`` marks a special token (BOS, EOS, an added control token)."""

    prompt: str
    ids: tuple[int, ...]
    pieces: tuple[str, ...]
    special: tuple[bool, ...]
    num_bos: int
    num_eos: int
    bos_id: int | None
    eos_id: int | None
    tokenizer_class: str

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "ids": list(self.ids),
            "tokens": [
                {"id": i, "piece": p, "special": s}
                for i, p, s in zip(self.ids, self.pieces, self.special, strict=True)
            ],
            "num_bos": self.num_bos,
            "num_eos": self.num_eos,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "tokenizer_class": self.tokenizer_class,
        }


def encode_prompt(
    prompt: str,
    tokenizer: str | os.PathLike[str],
    *,
    num_bos: int,
    num_eos: int,
    config_path: str | os.PathLike[str] | None = None,
) -> PromptTokens:
    """``prompt`` encoded as the ExecuTorch runner does: ``encode(prompt, num_bos, num_eos)``.

    ``tokenizer`` is the file the runner loads, ``config_path`` the tokenizer_config.json an HF
    tokenizer reads its bos/eos from. BOS, EOS and the tokenizer's special tokens are marked,
    and shown by their text (``<s>``; the runner's library decodes some as a space or nothing).
    """
    for name, count in (("num_bos", num_bos), ("num_eos", num_eos)):
        if not 0 <= count <= MAX_ADDED_TOKENS:
            raise UsageError(f"{name} must be 0 to {MAX_ADDED_TOKENS}, not {count}")
    info = read_tokenizer(tokenizer, config_path=config_path, check_runner=False)
    enc = encode_with_runner(tokenizer, prompt, bos=num_bos, eos=num_eos, config_path=config_path)
    names = {i: t for t, i in info.special_tokens.items()}
    for token_id, text in ((info.bos_id, info.bos_token), (info.eos_id, info.eos_token)):
        if token_id is not None and text:
            names[token_id] = text
    marked = {*names, *(i for i in (enc.bos_id, enc.eos_id) if i is not None)}
    return PromptTokens(
        prompt=prompt,
        ids=enc.ids,
        pieces=tuple(names.get(i, piece) for i, piece in zip(enc.ids, enc.pieces, strict=True)),
        special=tuple(i in marked for i in enc.ids),
        num_bos=num_bos,
        num_eos=num_eos,
        bos_id=enc.bos_id,
        eos_id=enc.eos_id,
        tokenizer_class=enc.tokenizer_class,
    )


__all__ = ["MAX_ADDED_TOKENS", "PromptTokens", "encode_prompt", "render_prompt", "template_tokens"]
