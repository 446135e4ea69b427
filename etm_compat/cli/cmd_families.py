"""``etm-compat families [show ID]``: the model families the registry knows."""

from __future__ import annotations

import argparse

from etm_compat.cli.common import emit_json
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.prompt.families.catalog import list_families, show_family


def run(args: argparse.Namespace) -> int:
    if args.families_command == "show":
        detail = show_family(args.id, variant=args.variant).to_json()
        if args.json:
            emit_json(detail)
        else:
            # Lazy: rich is for terminals; --json output never loads it.
            from etm_compat.cli.console import console, render_family

            render_family(console(), detail)
        return EXIT_OK
    entries = [entry.to_json() for entry in list_families()]
    if args.json:
        emit_json({"families": entries})
    else:
        # Lazy: rich is for terminals; --json output never loads it.
        from etm_compat.cli.console import console, render_families

        render_families(console(), entries)
    return EXIT_OK


__all__ = ["run"]
