"""Exit codes of the command line (documented in the README), and how errors map to them."""

from __future__ import annotations

from typing import Final

from etm_compat.errors import EtmError, OutputError, RuntimeUnavailableError, UsageError

EXIT_OK: Final = 0
EXIT_FINDINGS: Final = 1  # diagnose/verify found problems at the failure level; upgrade failures
EXIT_USAGE: Final = 2  # bad command-line usage
EXIT_BAD_INPUT: Final = 3  # an input file or folder is unreadable, malformed or unsupported
EXIT_OUTPUT: Final = 4  # an output cannot be written (exists, not writable, ...)
EXIT_RUNTIME: Final = 5  # the ExecuTorch runtime is missing or refused the program
EXIT_INTERNAL: Final = 70  # a bug in etm-compat (EX_SOFTWARE); never expected
EXIT_INTERRUPTED: Final = 130

#: How the command line spells the options a library hint names (``{force}`` -> ``--force``).
CLI_OPTIONS: Final = {
    "force": "--force",
    "tokenizer": "--tokenizer PATH",
    "family": "--family ID",
    "chat_template": "--chat-template FILE",
    "in_place": "--in-place",
    "format": "--format",
    "all": "--all",
    "older_than": "--older-than DAYS",
    "max_size": "--max-size SIZE",
}


def exit_code_for(error: EtmError) -> int:
    """The documented exit code of a library error's class."""
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, OutputError):
        return EXIT_OUTPUT
    if isinstance(error, RuntimeUnavailableError):
        return EXIT_RUNTIME
    return EXIT_BAD_INPUT


__all__ = [
    "CLI_OPTIONS",
    "EXIT_BAD_INPUT",
    "EXIT_FINDINGS",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "exit_code_for",
]
