"""The command line: a thin layer over the library, with one error boundary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from etm_compat import __version__
from etm_compat.errors import EXIT_INTERRUPTED, EXIT_USAGE, EtmError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etm-compat", description=__doc__)
    parser.add_argument("--version", action="version", version=f"etm-compat {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.func(args)
        return result
    except EtmError as exc:
        print(f"etm-compat: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("etm-compat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
