"""The one renderer of a deployment's prompts: its metadata's template and special tokens.

``etm-compat render`` and :meth:`etm_compat.Bundle.render` both call :func:`render_prompt` with
the metadata.json of an archive, or the metadata ``pack`` would write for a legacy folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from etm_compat.errors import UsageError
from etm_compat.prompt.chat import render_chat
from etm_compat.prompt.families import get_family


def render_prompt(
    meta: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    family: str | None = None,
    path: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` with the chat template and bos/eos strings ``meta`` records.

    ``family`` renders with that registry family's template and special tokens instead.
    ``extra`` are further template variables (``tools``, ``documents``...). ``path`` names the
    deployment in errors.
    """
    template = meta.get("chat_template")
    tokenizer = meta.get("tokenizer") or {}
    bos_token = tokenizer.get("bos_token")
    eos_tokens = [t for t in tokenizer.get("eos_tokens") or [] if t]
    eos_token = eos_tokens[0] if eos_tokens else None
    if family is not None:
        fam = get_family(family)
        template, bos_token, eos_token = fam.chat_template, fam.bos_token, fam.eos_token
    if not template:
        raise UsageError(
            "no chat template: none shipped, and the model family is unknown or has none (a base model)",
            path=path,
            hint="pass {family} (see the README's family list) or {chat_template}",
        )
    return render_chat(
        template,
        [dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **extra,
    )


__all__ = ["render_prompt"]
