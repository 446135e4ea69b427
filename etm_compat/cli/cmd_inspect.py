"""``etm-compat inspect PATH [--json]``: describe a program, weights, tokenizer, archive or folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from etm_compat.cli.common import adapters, emit_json
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.inspection import inspect


def run(args: argparse.Namespace) -> int:
    target = Path(args.path)
    # Only a folder is scanned for deployments: a file needs no adapters (they load every reader).
    info = inspect(target, adapters() if target.is_dir() else ()).to_json()
    if args.json:
        emit_json(info)
        return EXIT_OK
    # Lazy: rich is for terminals; --json output never loads it.
    from etm_compat.cli.console import console, render_inspect

    render_inspect(console(), info)
    return EXIT_OK


__all__ = ["run"]
