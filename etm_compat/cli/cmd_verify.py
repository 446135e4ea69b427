"""``etm-compat verify ARCHIVE [--runtime]``: structure, cross-references, hashes (and loading)."""

from __future__ import annotations

import argparse

from etm_compat.cli.common import emit_json
from etm_compat.cli.exit_codes import EXIT_FINDINGS, EXIT_OK
from etm_compat.verification import verify


def run(args: argparse.Namespace) -> int:
    result = verify(args.archive, runtime=args.runtime)
    if args.json:
        emit_json(result.to_json())
    else:
        # Lazy: rich is for terminals; --json output never loads it.
        from etm_compat.cli.console import console, render_findings, safe

        out = console()
        render_findings(out, [f.to_json() for f in result.findings], title=f"verify {safe(args.archive)}")
        out.print("[green]OK[/green]" if result.ok else "[bold red]FAILED[/bold red]")
    return EXIT_OK if result.ok else EXIT_FINDINGS


__all__ = ["run"]
