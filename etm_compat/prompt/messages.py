"""What users hand the renderer as JSON: the conversation, tools, documents, template variables.

Every one of them is untrusted text (a file, stdin, a command-line value). :func:`parse_json_input`
bounds it while it is read: the nesting is measured before ``json.loads`` recurses, numbers must
be finite and of a bounded size, and every failure is one :class:`~etm_compat.errors.InputError`
(or :class:`~etm_compat.errors.UsageError` for a malformed command-line value) naming what was
wrong. Roles are not checked against a list: the chat template decides which roles it accepts
(``ipython``, ``observation``, ``function``, ``tool_response``, ...), as transformers lets it.

>>> load_messages('[{"role": "observation", "content": "42"}]')
[{'role': 'observation', 'content': '42'}]
>>> parse_var("enable_thinking=false")
('enable_thinking', False)
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Final

from etm_compat.errors import InputError, UsageError
from etm_compat.jsonlimits import json_nesting

#: Most messages in one conversation.
MAX_MESSAGES: Final = 10_000
#: Deepest nesting of lists/objects in any JSON input (real tool schemas stay under 12).
MAX_JSON_DEPTH: Final = 64
#: Most digits of an integer in a JSON input (Python's own limit is 4300, far past any real use).
MAX_INT_DIGITS: Final = 100
#: Names that have their own option (of the renderer, or of ``render``): never a ``--var``.
RESERVED_VARIABLES: Final = frozenset(
    {
        "messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
        "family", "num_bos", "num_eos",
    }
)  # fmt: skip
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Where = str | os.PathLike[str] | None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def parse_json_input(text: str, *, what: str, path: Where = None) -> Any:
    """Parse untrusted JSON text: bounded nesting, finite numbers of bounded size.

    >>> parse_json_input('{"a": [1, 2.5, null]}', what="tools")
    {'a': [1, 2.5, None]}
    >>> parse_json_input("[NaN]", what="tools")
    Traceback (most recent call last):
    ...
    etm_compat.errors.InputError: tools: not valid JSON: NaN is not a JSON number
    """
    depth = json_nesting(text)
    if depth > MAX_JSON_DEPTH:
        raise InputError(
            f"{what}: nested {depth} levels deep, more than the {MAX_JSON_DEPTH} accepted",
            path=path,
        )
    try:
        data = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded_int
        )
        if _SURROGATE_ESCAPE.search(text):  # a lone "\udc80" is not text a model can be fed
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data
    except UnicodeEncodeError:
        raise InputError(
            f"{what}: a string holds a lone surrogate escape (\\ud800-\\udfff), not UTF-8 text", path=path
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what}: not valid JSON: {exc.msg} (line {exc.lineno})", path=path
        ) from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"{what}: not valid JSON: {exc}", path=path) from None


def load_messages(text: str, *, path: Where = None) -> list[dict[str, Any]]:
    """Parse and check an OpenAI-style ``[{"role": ..., "content": ...}]`` list.

    ``{"messages": [...]}`` (a request body) is accepted too. Each message is an object with a
    string ``role`` (any role) and a ``content`` that is a string, a list of parts or null; the
    other keys (``tool_calls``, ``reasoning_content``, ...) pass as they are.

    >>> load_messages('[{"role": "user", "content": "hi"}]')
    [{'role': 'user', 'content': 'hi'}]
    """
    data = parse_json_input(text, what="messages", path=path)
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise InputError(
            "messages must be a non-empty JSON list of {role, content} objects", path=path
        )
    if len(data) > MAX_MESSAGES:
        raise InputError(f"more than {MAX_MESSAGES} messages", path=path)
    for i, msg in enumerate(data):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InputError(f"message {i} has no string 'role'", path=path)
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(
                f"message {i} content must be a string, a list of parts or null, "
                f"not {type(content).__name__}",
                path=path,
            )
    return data


def load_objects(text: str, *, what: str, path: Where = None) -> list[dict[str, Any]]:
    """A JSON list of objects (tool schemas, documents); ``{"<what>": [...]}`` is accepted too.

    >>> load_objects('[{"title": "a", "text": "b"}]', what="documents")
    [{'title': 'a', 'text': 'b'}]
    """
    data = parse_json_input(text, what=what, path=path)
    if isinstance(data, dict) and isinstance(data.get(what), list):
        data = data[what]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise InputError(f"{what} must be a JSON list of objects", path=path)
    return data


def parse_var(spec: str) -> tuple[str, Any]:
    """A ``NAME=JSON`` template variable from the command line: the name and its value.

    The value is JSON, so ``false`` is the boolean (the string ``"False"`` would be true in a
    template). A value that is not JSON is a :class:`UsageError`.

    >>> parse_var('system_prompt="Be brief."')
    ('system_prompt', 'Be brief.')
    """
    name, sep, raw = spec.partition("=")
    if not sep or not _NAME.fullmatch(name):
        raise UsageError(
            f"template variable {spec[:60]!r} is not NAME=JSON",
            hint="write it as enable_thinking=false or name='\"text\"'",
        )
    if name in RESERVED_VARIABLES:
        raise UsageError(
            f"{name!r} has its own option; it cannot be set as a template variable",
            hint="use the messages, tools, documents or generation-prompt options",
        )
    try:
        value = parse_json_input(raw, what=f"template variable {name}")
    except InputError as exc:
        raise UsageError(
            exc.message,
            hint="the value is JSON: true, false, 3, null, or a quoted string such as '\"text\"'",
        ) from None
    return name, value


__all__ = [
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGES",
    "RESERVED_VARIABLES",
    "load_messages",
    "load_objects",
    "parse_json_input",
    "parse_var",
]
