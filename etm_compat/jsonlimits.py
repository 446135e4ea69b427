"""Limits for untrusted JSON, measured before parsing.

``json.loads`` recurses once per nesting level, so a file of ten thousand ``[`` exhausts the
stack (``RecursionError``) before any schema check runs. Every reader of untrusted JSON
(tokenizer files, deployment configs, an archive's metadata.json) measures the nesting first.
"""

from __future__ import annotations

import itertools
import re

# A complete JSON string literal; removing them leaves only structure, numbers and literals.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_nesting(text: bytes | str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text, not counting brackets inside strings.

    The work happens in the regex and ``bytes.translate`` (C), so megabytes cost milliseconds.

    >>> json_nesting('{"a": [1, {"b": "[[["}]}')
    3
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    steps = (1 if b in b"[{" else -1 for b in brackets)
    return max(itertools.accumulate(steps, initial=0))


__all__ = ["json_nesting"]
