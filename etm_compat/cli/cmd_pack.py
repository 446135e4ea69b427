"""``etm-compat pack SOURCE -o OUT.etm``: pack a legacy folder (or a .pte and its siblings)."""

from __future__ import annotations

import argparse
from pathlib import Path

from etm_compat.cli.common import adapters, emit_json, read_text
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.fileio import check_output
from etm_compat.inspection import tokenizers_read_ahead


def run(args: argparse.Namespace) -> int:
    if args.chat_template:  # read as text here, so the writer cannot see it as a source
        check_output(args.output, force=args.force, sources=[args.chat_template])
    template = read_text(args.chat_template, "chat template") if args.chat_template else None
    source = Path(args.source)
    # The tokenizer is read while the packing machinery loads.
    with tokenizers_read_ahead([args.tokenizer, source if source.is_dir() else source.parent]):
        # Lazy: after the read ahead has started.
        from etm_compat.packing import pack

        result = pack(
            args.source,
            args.output,
            adapters(),
            tokenizer=args.tokenizer,
            ptds=args.ptd or (),
            family=args.family,
            chat_template=template,
            force=args.force,
            fsync=not args.no_fsync,
        )
    findings = [f.to_json() for f in result.findings]
    if args.json:
        emit_json({"archive": str(result.archive), "size": result.size, "family": result.family, "findings": findings})
        return EXIT_OK
    # Lazy: rich is for terminals; --json output never loads it.
    from etm_compat.cli.console import console, render_findings, safe

    out = console()
    out.print(f"wrote {safe(result.archive)} ({result.size:,} bytes, family {safe(result.family or 'unknown')})")
    render_findings(out, findings)
    return EXIT_OK


__all__ = ["run"]
