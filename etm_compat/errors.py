"""The one exception hierarchy of etm-compat.

Every error the library raises on purpose derives from :class:`EtmError`. Each carries the
file it concerns, what was found, and a hint that names the fix; the command line turns it into
one line and the exit code of its class (see ``EXIT_CODES`` and the README).

Module-local errors also derive from the matching builtin (``ValueError``, ``OSError``...), so
callers that only know the builtin still catch them.
"""

from __future__ import annotations

import os
from typing import Final

#: Exit codes of the command line, one per error class (documented in the README).
EXIT_OK: Final = 0
EXIT_FINDINGS: Final = 1  # diagnose/verify found error-level problems
EXIT_USAGE: Final = 2  # bad command-line usage
EXIT_BAD_INPUT: Final = 3  # an input file or folder is unreadable, malformed or unsupported
EXIT_OUTPUT: Final = 4  # an output cannot be written (exists, not writable, ...)
EXIT_RUNTIME: Final = 5  # the ExecuTorch runtime is missing or refused the program
EXIT_INTERNAL: Final = 70  # a bug in etm-compat (EX_SOFTWARE); never expected
EXIT_INTERRUPTED: Final = 130


def _escape(text: str) -> str:
    """Make text read from a file safe to print: control characters become escapes."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


class EtmError(Exception):
    """Base of every error etm-compat raises on purpose.

    >>> str(EtmError("bad thing", path="a/b.pte", hint="re-export it"))
    'a/b.pte: bad thing (hint: re-export it)'
    """

    exit_code: int = EXIT_BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = _escape(self.message)
        if self.path is not None:
            text = f"{_escape(self.path)}: {text}"
        if self.hint:
            text = f"{text} (hint: {_escape(self.hint)})"
        return text


class UsageError(EtmError, ValueError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class InputError(EtmError, ValueError):
    """An input file or folder is unreadable, malformed or unsupported."""

    exit_code = EXIT_BAD_INPUT


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
    """An output cannot be written: it exists (and ``--force`` was not given), or is not writable."""

    exit_code = EXIT_OUTPUT


class RuntimeUnavailableError(EtmError, RuntimeError):
    """The ExecuTorch runtime (torch + executorch) is not installed or refused the program."""

    exit_code = EXIT_RUNTIME


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FINDINGS",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
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
]
