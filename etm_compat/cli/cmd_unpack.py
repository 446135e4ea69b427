"""``etm-compat unpack ARCHIVE -o DIR``: restore the multi-file layout from an archive."""

from __future__ import annotations

import argparse

from etm_compat.cli.common import emit_json
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.packing import unpack


def run(args: argparse.Namespace) -> int:
    written = unpack(args.archive, args.output, force=args.force, app=args.app)
    if args.json:
        emit_json({"written": [str(p) for p in written]})
        return EXIT_OK
    # Lazy: rich is for terminals; --json output never loads it.
    from etm_compat.cli.console import console, safe

    out = console()
    for path in written:
        out.print(f"wrote {safe(path)}")
    return EXIT_OK


__all__ = ["run"]
