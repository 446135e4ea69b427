"""``etm-compat cache list|prune``: the cache folder of materialized archives and runner checks."""

from __future__ import annotations

import argparse
from typing import Any

from etm_compat.cli.common import emit_json
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.compat import cache_admin


def _plural(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def run(args: argparse.Namespace) -> int:
    if args.cache_command == "prune":
        max_size = cache_admin.parse_size(args.max_size) if args.max_size else None
        pruned = cache_admin.prune(remove_all=args.all, older_than_days=args.older_than, max_size=max_size)
        if args.json:
            emit_json({"removed": [e.key for e in pruned.removed], "freed": pruned.freed, "leftovers": pruned.leftovers})
            return EXIT_OK
        # Lazy: rich is for terminals; --json output never loads it.
        from etm_compat.cli.console import console

        console().print(f"removed {_plural(len(pruned.removed))}, freed {pruned.freed:,} bytes")
        return EXIT_OK
    entries = cache_admin.list_entries()
    if args.json:
        rows: list[dict[str, Any]] = [
            {"key": e.key, "kind": e.kind, "folder": str(e.folder), "size": e.size, "created": e.created, "last_used": e.last_used, "archive": e.archive}
            for e in entries
        ]
        emit_json({"root": str(cache_admin.cache_dir()), "entries": rows})
        return EXIT_OK
    # Lazy: rich is for terminals; --json output never loads it.
    from etm_compat.cli.console import console, safe

    out = console()
    out.print(f"{safe(cache_admin.cache_dir())}: {_plural(len(entries))}, {sum(e.size for e in entries):,} bytes")
    for e in entries:
        out.print(f"  {e.key[:16]}  {e.size:>14,}  {safe(e.archive)}")
    return EXIT_OK


__all__ = ["run"]
