"""The one exception hierarchy of etm-compat.

Every error the library raises on purpose derives from :class:`EtmError`. Each carries the
file it concerns, what was found, and a hint that names the fix in library terms; the command
line spells the options of a hint as its flags and maps each class to an exit code.

Module-local errors also derive from the matching builtin (``ValueError``, ``OSError``...), so
callers that only know the builtin still catch them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Final

#: How the library spells an option named in a hint (``{force}`` in a hint's text); the command
#: line passes its own spellings (``--force``) to :meth:`EtmError.describe`.
LIBRARY_OPTIONS: Final[Mapping[str, str]] = {
    "force": "force=True",
    "tokenizer": "tokenizer=PATH",
    "family": "family=ID",
    "chat_template": "chat_template=TEXT",
    "in_place": "in_place=True",
    "format": "fmt=json|md|html",
    "all": "remove_all=True",
    "older_than": "older_than_days=DAYS",
    "max_size": "max_size=BYTES",
}
_OPTION: Final = re.compile(r"\{(" + "|".join(LIBRARY_OPTIONS) + r")\}")


#: Bidirectional controls (a right-to-left override makes ``exe.pdf`` of ``fdp.exe``) and the
#: invisible marks around them: shown escaped, like control characters.
_BIDI_AND_INVISIBLE: Final = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2066\u2067\u2068\u2069\ufeff"
)
#: Every character :func:`escape_control` escapes, as inclusive code point ranges: the one
#: definition both escapers are compiled from.
_ESCAPED_RANGES: Final = (
    (0x00, 0x1F),  # C0 controls
    (0x7F, 0x9F),  # DEL and C1 controls
    (0xD800, 0xDFFF),  # a lone surrogate: a file name byte that is not UTF-8
    (0x2028, 0x2029),  # line and paragraph separators
    *sorted((ord(ch), ord(ch)) for ch in _BIDI_AND_INVISIBLE),
)


@functools.cache
def _escaped(in_json: bool) -> re.Pattern[str]:
    """One character to escape, as a compiled regex: C-level scans that leave every other
    character alone. ``in_json`` leaves C0 controls out: ``json.dumps`` escaped those inside
    strings, so any left in its output are its own indentation. Compiled on first use (a
    millisecond every command's start-up would pay), touching ranges merged."""
    merged: list[list[int]] = []
    for lo, hi in sorted(_ESCAPED_RANGES):
        if in_json and lo < 0x20:
            continue
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in merged) + "]")


def _python_escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_control(text: str) -> str:
    r"""Make text read from a file safe to print: control characters, bidi overrides and
    invisible marks become escapes, and so do lone surrogates (how Python spells a file-name
    byte that is not UTF-8; ``\udcff`` is also how metadata.json records it).

    >>> print(escape_control("a\x1b[31mb \u202egnp.exe n\udcff"))
    a\x1b[31mb \u202egnp.exe n\udcff
    """
    return _escaped(False).sub(_python_escape, text)


def escape_json_text(text: str) -> str:
    r"""JSON text (as ``json.dumps(..., ensure_ascii=False)`` writes it) with every character
    :func:`escape_control` escapes written as a ``\uXXXX`` escape: the same JSON value, safe on a
    terminal and always encodable as UTF-8 (a lone surrogate stays a lone surrogate escape).

    >>> escape_json_text('"a\u202eb\udcff"')
    '"a\\u202eb\\udcff"'
    """
    return _escaped(True).sub(_json_escape, text)


def spell_options(hint: str, options: Mapping[str, str]) -> str:
    """A hint's ``{option}`` markers spelled with ``options`` (unknown names stay as they are)."""
    return _OPTION.sub(lambda m: options.get(m.group(1), m.group(0)), hint)


class EtmError(Exception):
    """Base of every error etm-compat raises on purpose.

    A hint may name an option as ``{force}``, ``{tokenizer}``...: :attr:`hint` spells it the
    library's way, :meth:`describe` the caller's way.

    >>> str(EtmError("bad thing", path="a/b.pte", hint="re-export it"))
    'a/b.pte: bad thing (hint: re-export it)'
    >>> EtmError("exists", hint="pass {force}").describe({"force": "--force"})
    'exists (hint: pass --force)'
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint_template = hint
        self.hint = spell_options(hint, LIBRARY_OPTIONS) if hint else hint
        super().__init__(self.__str__())

    def describe(self, options: Mapping[str, str] = LIBRARY_OPTIONS) -> str:
        """One line: path, message and hint, control characters escaped, options spelled."""
        text = escape_control(self.message)
        if self.path is not None:
            text = f"{escape_control(self.path)}: {text}"
        if self.hint_template:
            hint = spell_options(self.hint_template, options)
            text = f"{text} (hint: {escape_control(hint)})"
        return text

    def __str__(self) -> str:
        return self.describe()


class UsageError(EtmError, ValueError):
    """The caller asked for something that cannot be done as asked."""


class InputError(EtmError, ValueError):
    """An input file or folder is unreadable, malformed or unsupported."""


class UnreadableError(InputError):
    """An input path does not exist or cannot be opened."""


class PteFormatError(InputError):
    """A ``.pte`` file is not a valid ExecuTorch program (wrong identifier, truncated, corrupt)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.offset = offset
        if offset is not None:
            message = f"{message} (at byte {offset})"
        super().__init__(message, path=path, hint=hint)


class PtdFormatError(PteFormatError):
    """A ``.ptd`` file is not a valid ExecuTorch flat-tensor data file."""


class TokenizerFormatError(InputError):
    """A tokenizer file is of no known format, or is corrupt."""


class ArchiveError(InputError):
    """An ``.etm`` archive is malformed, unsafe or fails verification."""


class IntegrityError(ArchiveError):
    """An archive member's bytes do not match the recorded size, CRC or sha256."""


class MetadataError(ArchiveError):
    """``metadata.json`` is missing, too large, not JSON, or does not match the schema."""


class UnsupportedVersionError(ArchiveError):
    """The archive's format version is newer than this reader supports."""


class TemplateError(InputError):
    """A chat template failed to compile or render (syntax, sandbox violation, limits)."""


class OutputError(EtmError, OSError):
    """An output cannot be written: it exists (and ``force`` was not given), or is not writable."""


class RuntimeUnavailableError(EtmError, RuntimeError):
    """The ExecuTorch runtime (torch + executorch) is not installed or refused the program."""


__all__ = [
    "LIBRARY_OPTIONS",
    "ArchiveError",
    "EtmError",
    "InputError",
    "IntegrityError",
    "MetadataError",
    "OutputError",
    "PtdFormatError",
    "PteFormatError",
    "RuntimeUnavailableError",
    "TemplateError",
    "TokenizerFormatError",
    "UnreadableError",
    "UnsupportedVersionError",
    "UsageError",
    "escape_control",
    "spell_options",
]
