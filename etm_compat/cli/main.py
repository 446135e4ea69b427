"""The command line: a thin layer over the library, the same verbs, one error boundary.

Each verb lives in its own module (:data:`VERBS`), imported only when that verb runs: parsing
the arguments (and ``--help``) loads no verb, and a verb loads only what it uses (rich only for
terminal output, never for ``--json``). Exit codes are in :mod:`etm_compat.cli.exit_codes`
(and the README).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from etm_compat.cli.exit_codes import (
    CLI_OPTIONS,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code_for,
)
from etm_compat.constants import VERSION
from etm_compat.errors import EtmError

#: The ExecuTorch demo apps ``unpack --for`` and ``diagnose --app`` name: the ids of
#: :data:`etm_compat.prompt.apps.APP_IDS` (tests/test_startup.py checks they are the same),
#: spelled here so that parsing the arguments loads none of the apps' registry.
APP_CHOICES: Final = ("android", "ios")


# --- parser -----------------------------------------------------------------------------------

if TYPE_CHECKING:
    _Verbs = argparse._SubParsersAction["_Parser"]


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of 0 or more."""
    return _whole_number(text, 0)


def non_negative_days(text: str) -> float:
    """An argparse type: a finite number of days, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of days, 0 or more, not {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, not {text!r}")
    return value



def _add_inspect(sub: _Verbs) -> None:
    p = sub.add_parser("inspect", help="describe a .pte, .ptd, tokenizer, .etm archive or folder")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON for machines")


def _add_pack(sub: _Verbs) -> None:
    p = sub.add_parser("pack", help="pack a legacy folder or a .pte with its siblings into one .etm")
    p.add_argument("source", help="a legacy deployment folder, or a .pte whose siblings are discovered")
    p.add_argument("-o", "--output", required=True, help="the archive to write (.etm)")
    p.add_argument("--tokenizer", help="use this tokenizer file instead of the one found")
    p.add_argument("--ptd", action="append", help="use this .ptd (repeatable) instead of the ones found")
    p.add_argument("--family", help="force the model family (an id that etm-compat families lists)")
    p.add_argument("--chat-template", help="use this Jinja chat template file")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not wait for the archive to reach the disk (still atomic against crashes, not power loss)",
    )
    p.add_argument("--json", action="store_true")


def _add_unpack(sub: _Verbs) -> None:
    p = sub.add_parser("unpack", help="restore the multi-file layout from an archive")
    p.add_argument("archive")
    p.add_argument("-o", "--output", required=True, help="folder to write into")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument(
        "--for",
        dest="app",
        choices=APP_CHOICES,
        help="name the program so this ExecuTorch demo app picks the model type of the archive's family",
    )
    p.add_argument("--json", action="store_true")


def _add_verify(sub: _Verbs) -> None:
    p = sub.add_parser("verify", help="check an archive's structure and hashes (and, with --runtime, load it)")
    p.add_argument("archive")
    p.add_argument("--runtime", action="store_true", help="load the program in executorch and the tokenizer in pytorch_tokenizers")
    p.add_argument("--json", action="store_true")


def _add_diagnose(sub: _Verbs) -> None:
    p = sub.add_parser("diagnose", help="report mismatches between programs, tokenizers, templates and weights")
    p.add_argument("path", help="a legacy folder, a .pte, an .etm archive, or a tree of them")
    p.add_argument("--json", action="store_true", help="print the JSON report (schema: diagnose.schema.json)")
    p.add_argument("--format", choices=("json", "md", "html"), help="report format (default: terminal; with --output: from the extension)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (.json, .md or .html)")
    p.add_argument("--fail-on", choices=("error", "warning", "info"), default="error", help="exit 1 when a finding is at or above this level (default: error)")
    p.add_argument("--runtime", action="store_true", help="also check delegate backends against the installed ExecuTorch runtime (imports torch)")
    p.add_argument("--app", choices=APP_CHOICES, help="also check each program as this ExecuTorch demo app would take it: model type from the file name, hard-coded prompt format")
    p.add_argument("--force", action="store_true", help="replace an existing --output file (never one of the scanned files)")


def _add_render(sub: _Verbs) -> None:
    p = sub.add_parser(
        "render", help="render a conversation with a deployment's chat template, as apply_chat_template does"
    )
    p.add_argument("path", help="an .etm archive or a legacy folder / .pte")
    conversation = p.add_mutually_exclusive_group(required=True)
    conversation.add_argument(
        "--messages",
        metavar="FILE",
        help='JSON file ("-" for stdin, a pipe is fine): [{"role": ..., "content": ...}, ...], any roles',
    )
    conversation.add_argument("--user", metavar="TEXT", help="render one user message")
    p.add_argument("--tools", metavar="FILE", help="JSON list of tool schemas, passed as tools= (\"-\" for stdin)")
    p.add_argument("--documents", metavar="FILE", help="JSON list of documents, passed as documents= (\"-\" for stdin)")
    p.add_argument(
        "--var",
        metavar="NAME=JSON",
        action="append",
        help="a template variable, repeatable: --var enable_thinking=false (unset ones keep the template's default)",
    )
    ending = p.add_mutually_exclusive_group()
    ending.add_argument("--no-generation-prompt", action="store_true")
    ending.add_argument(
        "--continue-final-message",
        action="store_true",
        help="leave the final message open for the model to continue (no generation prompt)",
    )
    p.add_argument("--family", help="use this family's template (etm-compat families lists them)")
    p.add_argument(
        "--tokens",
        action="store_true",
        help="show the token ids the ExecuTorch runner feeds: the prompt encoded by its tokenizer library, num_bos/num_eos added",
    )
    p.add_argument("--num-bos", type=non_negative_int, metavar="N", help="with --tokens: BOS tokens to add (default: the deployment's)")
    p.add_argument("--num-eos", type=non_negative_int, metavar="N", help="with --tokens: EOS tokens to add (default: the deployment's)")
    p.add_argument("--json", action="store_true", help='print {"prompt": ...} (with --tokens, also ids, pieces and special marks)')


def _add_families(sub: _Verbs) -> None:
    p = sub.add_parser("families", help="list the model families the registry knows (the ids --family takes)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    fsub = p.add_subparsers(dest="families_command", metavar="ACTION")
    f = fsub.add_parser("show", help="print a family's chat template and a sample conversation rendered with it")
    f.add_argument("id", help="a family id (see etm-compat families)")
    f.add_argument("--variant", default="default", help="a named template variant of the family")
    f.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for machines")


def _add_upgrade(sub: _Verbs) -> None:
    p = sub.add_parser("upgrade", help="pack every deployment under a folder into .etm archives (resumable)")
    p.add_argument("root", help="the folder to scan for legacy deployments")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="write archives here, mirroring ROOT's folders")
    where.add_argument("--in-place", action="store_true", help="write each archive beside its sources")
    p.add_argument("--dry-run", action="store_true", help="only print the plan")
    p.add_argument("-j", "--jobs", type=positive_int, help="processes that pack, this one included, at least 1 (default: the cores): with 2 or more, N-1 worker processes, and this one packs while it waits")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (needs etm-compat[dask])")
    p.add_argument(
        "--scheduler-timeout",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="give up reaching the --scheduler after SECONDS (default: 5)",
    )
    p.add_argument(
        "--report", metavar="FILE", action="append", help="write a report: .json, .md or .html (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="repack archives that are up to date")
    p.add_argument(
        "--overwrite-reports",
        action="store_true",
        help="replace --report files that exist (never a source or archive of the run)",
    )
    p.add_argument("--verify-existing", action="store_true", help="hash archives and sources to decide what is up to date")
    p.add_argument("--json", action="store_true", help="print the result (or, with --dry-run, the plan) as JSON")


def _add_cache(sub: _Verbs) -> None:
    p = sub.add_parser("cache", help="list or prune the cache of archives materialized for path-only runners")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    c = csub.add_parser("list", help="list the cache entries (least recently used first)")
    c.add_argument("--json", action="store_true")
    c = csub.add_parser("prune", help="remove cache entries")
    c.add_argument("--all", action="store_true", help="remove every entry")
    c.add_argument("--older-than", type=non_negative_days, metavar="DAYS", help="remove entries unused for DAYS")
    c.add_argument("--max-size", metavar="SIZE", help="then remove least recently used entries down to SIZE (500M, 2G)")
    c.add_argument("--json", action="store_true")


#: Every verb, in the order ``--help`` lists them: the module that runs it with
#: ``run(args) -> int`` (imported when the verb runs), and how its arguments are declared.
_VERB_TABLE: Final[dict[str, tuple[str, Callable[[_Verbs], None]]]] = {
    "inspect": ("etm_compat.cli.cmd_inspect", _add_inspect),
    "pack": ("etm_compat.cli.cmd_pack", _add_pack),
    "unpack": ("etm_compat.cli.cmd_unpack", _add_unpack),
    "verify": ("etm_compat.cli.cmd_verify", _add_verify),
    "diagnose": ("etm_compat.cli.cmd_diagnose", _add_diagnose),
    "render": ("etm_compat.cli.cmd_render", _add_render),
    "families": ("etm_compat.cli.cmd_families", _add_families),
    "upgrade": ("etm_compat.cli.cmd_upgrade", _add_upgrade),
    "cache": ("etm_compat.cli.cmd_cache", _add_cache),
}
#: Each verb's module (from :data:`_VERB_TABLE`).
VERBS: Final = {name: module for name, (module, _) in _VERB_TABLE.items()}


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` (``$COLUMNS``, else the terminal on stdout, else
    80) without importing shutil: argparse does at every formatter it makes, and every argument
    declared makes one, so a command line paid 2 ms (shutil with bz2 and lzma) to parse."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, as wide as :func:`_terminal_columns` says."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """An argument parser (and, through ``add_subparsers``, each verb's) that formats with
    :class:`_HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every verb, or only ``verb``'s, which is all that parsing a
    command line naming it needs (declaring all nine took 4.5 ms of a 0.1 s ``inspect``)."""
    parser = _Parser(
        prog="etm-compat",
        description="Migrate ExecuTorch LLM deployments from loose files to single .etm archives.",
    )
    parser.add_argument("--version", action="version", version=f"etm-compat {VERSION}")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, add) in _VERB_TABLE.items():
        if verb is None or name == verb:
            add(sub)
    return parser


def _named_verb(argv: Sequence[str]) -> str | None:
    """The verb a command line names, when nothing before it could need the other verbs
    (``--help`` lists them all; a misspelt verb is told apart from them); else None."""
    for arg in argv:
        if arg != "--traceback":
            return arg if arg in VERBS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script calls :func:`run`)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_named_verb(arguments))
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        verb = importlib.import_module(VERBS[args.command])
        result: int = verb.run(args)
        return result
    except EtmError as exc:
        if args.traceback or os.environ.get("ETM_TRACEBACK"):
            raise
        print(f"etm-compat: error: {exc.describe(CLI_OPTIONS)}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("etm-compat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the boundary: a bug must still end in one line, not a traceback
        if args.traceback or os.environ.get("ETM_TRACEBACK"):
            raise
        print(
            f"etm-compat: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug in etm-compat; rerun with --traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


#: The collector's first-generation threshold while the command line runs (CPython's default is
#: 700 allocations): a command is one short pass, most of what it allocates lives to its end,
#: and a collection every 700 allocations traversed it again and again (24 young and 3 older
#: collections in one ``inspect`` of Llama 3's tokenizer.json). Memory stays bounded: cyclic
#: garbage is still collected, after this many allocations.
CLI_GC_THRESHOLD: Final = 50_000


def run() -> NoReturn:
    """The process entry point (the ``etm-compat`` script, ``python -m etm_compat``): :func:`main`
    with the collector tuned for one command, then exit with its code.

    Before the interpreter exits, everything still on the heap is frozen (:func:`gc.freeze`): at
    exit the collector would otherwise traverse all of it once more only for the OS to take the
    memory back (8 ms of a 0.12 s ``inspect``). Atexit handlers and the flushing of stdout and
    stderr run as before; what the traversal would have found, objects left in reference cycles,
    is not finalized (every file etm-compat writes is closed before its verb returns).
    """
    _, *older = gc.get_threshold()
    gc.set_threshold(CLI_GC_THRESHOLD, *older)
    code = main()
    gc.freeze()
    sys.exit(code)


__all__ = ["APP_CHOICES", "CLI_GC_THRESHOLD", "VERBS", "build_parser", "main", "non_negative_days", "non_negative_int", "positive_int", "positive_seconds", "run"]
