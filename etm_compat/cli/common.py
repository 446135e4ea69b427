"""What the verb modules (``cli/cmd_*.py``) share: the adapter list, bounded text inputs, JSON out.

Nothing here loads more than the leaves: every verb imports this module, ``inspect --json`` too.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Final

from etm_compat.errors import InputError, escape_json_text
from etm_compat.fileio import read_named_input, read_stream_capped

if TYPE_CHECKING:
    from etm_compat.legacy.deployment import Adapter

#: The most a small text input (messages, a chat template) may hold.
TEXT_INPUT_LIMIT: Final = 4 * 1024 * 1024


def emit_json(obj: object) -> None:
    """``--json`` output: indented, UTF-8, control characters escaped; never through rich."""
    sys.stdout.write(escape_json_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str)) + "\n")


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


__all__ = ["TEXT_INPUT_LIMIT", "adapters", "emit_json", "read_text"]
