"""``etm-compat diagnose PATH``: the mismatch report, on the terminal, as JSON or as a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from etm_compat.archive.read import is_archive
from etm_compat.cli import report_files
from etm_compat.cli.common import adapters
from etm_compat.cli.exit_codes import EXIT_FINDINGS, EXIT_OK
from etm_compat.diagnosis import diagnose
from etm_compat.fileio import check_output
from etm_compat.legacy.resolve import resolve_source
from etm_compat.legacy.scan import scan


def run(args: argparse.Namespace) -> int:
    fmt = "json" if args.json and args.format is None else args.format
    if args.output:
        fmt = report_files.format_for(args.output, fmt)  # a bad extension fails before any work
        check_output(args.output, force=args.force, sources=[args.path])  # ...and an existing file
    report = diagnose(args.path, adapters(), runtime=args.runtime, app=args.app)
    if args.output:
        sources = diagnosed_files(args.path)
        report_files.write_report(args.output, report, fmt=fmt, force=args.force, sources=sources)
    elif fmt is not None:
        sys.stdout.write(report_files.render(report, fmt))
    if fmt is None or (args.output and not args.json):
        # Lazy: rich is for terminals; --json output never loads it.
        from etm_compat.cli.console import console, render_diagnose

        render_diagnose(console(), report.to_json())
    return EXIT_FINDINGS if report.at_or_above(args.fail_on) else EXIT_OK


def diagnosed_files(path: str) -> list[Path]:
    """Every file ``diagnose PATH`` reads: a report must never be written over one of them."""
    target = Path(path)
    adapters_ = adapters()
    if target.is_file():
        if is_archive(target):
            return [target]
        return [target, *resolve_source(target, adapters_).sources]
    result = scan(target, adapters_)
    files = [f for dep in result.deployments for f in dep.sources]
    return files + list(result.archives)


__all__ = ["diagnosed_files", "run"]
