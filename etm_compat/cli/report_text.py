"""Untrusted text made visible, then inert, for each medium a report is written in.

Everything a report shows comes from files: names, messages quoting file contents, tokens. First
:func:`visible` writes every control or invisible code point (bidi overrides, zero-width
characters, line separators, undecodable bytes) as an escape, so nothing can hide or reorder
what a report shows. Then each medium gets its own inert form:

- Markdown: a code span (:func:`md_code`), where no markup, HTML or entity is recognised, so the
  text reads the same in a terminal and in a viewer; :func:`md_cell` adds what a table cell
  needs (an escaped ``|``). No HTML entity is ever written.
- HTML: :func:`esc` (``html.escape`` of the visible text).
- JSON embedded in a page's ``<script type="application/json">``: :func:`script_json`, which
  cannot close the element (``</script>``) or open a comment, and escapes U+2028/U+2029.

>>> md_code("<|eot_id|>")
'`<|eot_id|>`'
>>> md_cell("a|b")
'`a\\\\|b`'
"""

from __future__ import annotations

import html
import json
import re
from typing import Any, Final

from etm_compat.errors import escape_control

#: Characters that would end an HTML ``<script>`` element, open a comment or break a JS
#: string, each written as a JSON escape (JSON.parse reads them back unchanged).
_SCRIPT_UNSAFE: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_BACKTICKS: Final = re.compile(r"`+")


def visible(value: object) -> str:
    """``value`` as text with every control or invisible code point written as an escape.

    Beyond :func:`~etm_compat.errors.escape_control`, anything :meth:`str.isprintable` rejects
    (bidi overrides, zero-width and format characters, lone surrogates from undecodable file
    names) is escaped.
    """
    text = str(value)
    if text.isprintable():  # the common case, checked in C: nothing to escape
        return text
    text = escape_control(text)
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def visible_lines(value: object) -> str:
    """:func:`visible`, keeping line breaks as line breaks (for a rendered prompt)."""
    return "\n".join(visible(line) for line in str(value).split("\n"))


def md_text(value: object) -> str:
    """Untrusted text made inert in Markdown prose by backslash escapes (one line).

    Prefer :func:`md_code`, which reads cleanly in a terminal as well; this form is for
    callers that need plain prose.
    """
    text = visible(value)
    for ch in "\\`*_[]<>|#!~&":
        text = text.replace(ch, "\\" + ch)
    return text


def md_code(value: object) -> str:
    """Untrusted text as one Markdown code span: shown literally, markup and HTML inert.

    The fence is one backtick longer than the longest run inside; a space pads text that
    starts or ends with a backtick or a space (CommonMark strips one on each side). Empty
    text is ``""``.
    """
    text = visible(value)
    if not text:
        return '""'
    fence = "`" * (max((len(m) for m in _BACKTICKS.findall(text)), default=0) + 1)
    if text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    return f"{fence}{text}{fence}"


def md_cell(value: object) -> str:
    """:func:`md_code` for a table cell: ``|`` escaped (GFM splits cells before code spans),
    and a backslash right before a pipe written as ``\\x5c`` so no reader takes the pipe's
    escape for an escaped backslash."""
    text = visible(value).replace("\\|", "\\x5c|")
    return md_code(text).replace("|", "\\|")


def esc(value: object) -> str:
    """Untrusted text for HTML text or a quoted attribute: made visible, then ``html.escape``."""
    return html.escape(visible(value), quote=True)


def script_json(value: Any) -> str:
    """``value`` as JSON safe inside ``<script type="application/json">`` (read it back with
    ``JSON.parse(element.textContent)``)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    for ch, escape in _SCRIPT_UNSAFE.items():
        text = text.replace(ch, escape)
    return text


__all__ = [
    "esc",
    "md_cell",
    "md_code",
    "md_text",
    "script_json",
    "visible",
    "visible_lines",
]
