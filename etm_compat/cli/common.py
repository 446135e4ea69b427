"""What the verb modules (``cli/cmd_*.py``) share: the adapter list, bounded text inputs, JSON out.

Nothing here loads more than the leaves: every verb imports this module, ``inspect --json`` too.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Final

from etm_compat.errors import InputError, escape_json_text
from etm_compat.fileio import read_named_input, read_stream_capped
from etm_compat.jsonlimits import msgspec_for

if TYPE_CHECKING:
    from etm_compat.legacy.deployment import Adapter

#: The most a small text input (messages, a chat template) may hold.
TEXT_INPUT_LIMIT: Final = 4 * 1024 * 1024


def json_text(obj: object) -> str:
    """``obj`` as ``--json`` prints it: ``json.dumps(obj, indent=2, ensure_ascii=False,
    default=str)`` with control characters escaped (:func:`escape_json_text`).

    ``json.dumps`` indents only in pure Python; its C encoder writes compact text, which
    ``msgspec.json.format`` indents in C to the same bytes (it keeps strings and numbers as
    written). Text that is not strict JSON (NaN, Infinity) takes the pure-Python way.

    >>> print(json_text({"a": [1, 2.5], "b": {}}))
    {
      "a": [
        1,
        2.5
      ],
      "b": {}
    }
    """
    compact = json.dumps(obj, ensure_ascii=False, default=str)
    msgspec = msgspec_for(len(compact))  # a tokenizer inspect has loaded it; large output pays
    if msgspec is not None:
        try:
            # escaped first: a lone surrogate (a file name that is not UTF-8) becomes an escape,
            # and msgspec takes UTF-8 text only
            indented: str = msgspec.json.format(escape_json_text(compact), indent=2)
        except msgspec.DecodeError:  # NaN or Infinity, which json.dumps writes and JSON lacks
            pass
        else:
            return indented
    return escape_json_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def emit_json(obj: object) -> None:
    """``--json`` output: indented, UTF-8, control characters escaped; never through rich."""
    sys.stdout.write(json_text(obj) + "\n")


def adapters() -> list[Adapter]:
    """The one place the list of legacy layouts is assembled."""
    # Lazy: the adapters load every format reader; only verbs that read deployments call this.
    from etm_compat.adapters import default_adapters

    return list(default_adapters())


def read_text(path: str, what: str) -> str:
    """A small UTF-8 input the user named: a file, a pipe (``<(...)``) or ``-`` for stdin; bounded."""
    if path == "-":
        data = read_stream_capped(sys.stdin.buffer, TEXT_INPUT_LIMIT, what=what, path="<stdin>")
    else:
        data = read_named_input(path, TEXT_INPUT_LIMIT, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text", path=path) from exc


__all__ = ["TEXT_INPUT_LIMIT", "adapters", "emit_json", "json_text", "read_text"]
