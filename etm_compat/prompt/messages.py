"""Conversations as users give them: an OpenAI-style list of ``{"role", "content"}`` messages."""

from __future__ import annotations

import json
import os
from typing import Any

from etm_compat.errors import InputError

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
    except (RecursionError, ValueError) as exc:  # nested too deep, or a number too long to read
        raise InputError(f"messages cannot be read as JSON: {exc}", path=path) from None
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


__all__ = ["MAX_MESSAGES", "ROLES", "load_messages"]
