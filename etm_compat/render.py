"""``render``: format a conversation exactly as the deployment's model expects."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etm_compat.legacy.deployment import Adapter
from etm_compat.errors import InputError, UsageError

MAX_MESSAGES = 10_000
ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "ipython"})


def load_messages(text: str, *, path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Parse and check an OpenAI-style ``[{"role": ..., "content": ...}]`` list.

    >>> load_messages('[{"role": "user", "content": "hi"}]')
    [{'role': 'user', 'content': 'hi'}]
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"messages are not valid JSON: {exc.msg} (line {exc.lineno})", path=path) from exc
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise InputError("messages must be a non-empty JSON list of {role, content} objects", path=path)
    if len(data) > MAX_MESSAGES:
        raise InputError(f"more than {MAX_MESSAGES} messages", path=path)
    for i, msg in enumerate(data):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InputError(f"message {i} has no string 'role'", path=path)
        if msg["role"] not in ROLES:
            raise InputError(
                f"message {i} has unknown role {msg['role']!r}",
                path=path,
                hint=f"roles are {', '.join(sorted(ROLES))}",
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(f"message {i} content must be a string or a list of parts", path=path)
    return data


def _template_of_archive(path: Path) -> tuple[str | None, dict[str, Any]]:
    from etm_compat.archive import open_archive

    with open_archive(path) as archive:
        meta = archive.metadata
    return meta.get("chat_template"), meta


def render_prompt(
    path: str | os.PathLike[str],
    messages: Sequence[dict[str, Any]],
    *,
    adapters: Sequence[Adapter],
    add_generation_prompt: bool = True,
    family: str | None = None,
) -> str:
    """Render ``messages`` with the chat template of an archive or a legacy folder/``.pte``."""
    from etm_compat.prompt.chat import render_chat

    p = Path(path)
    if p.is_file() and p.suffix != ".pte":
        template, meta = _template_of_archive(p)
        tok = meta.get("tokenizer") or {}
        bos_token = tok.get("bos_token")
        eos_tokens = [t for t in tok.get("eos_tokens") or [] if t]
        eos_token = eos_tokens[0] if eos_tokens else None
        if family is not None:
            from etm_compat.prompt.families import get_family

            fam = get_family(family)
            template, bos_token, eos_token = fam.chat_template, fam.bos_token, fam.eos_token
    else:
        from etm_compat.packing import describe, resolve_source

        view = describe(resolve_source(p, adapters), family=family, check_runner=False)
        inf = view.inference
        template = inf.chat_template
        bos_token = inf.bos_token
        eos_token = view.tokenizer.eos_token
        if inf.family_id is not None:
            from etm_compat.prompt.families import get_family

            fam = get_family(inf.family_id)
            bos_token = bos_token or fam.bos_token
            eos_token = fam.eos_token or eos_token
    if not template:
        raise UsageError(
            "no chat template: none shipped and the model family is unknown",
            path=p,
            hint="pass --family ID (see the README's family list)",
        )
    return render_chat(
        template,
        list(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
